"""`golong eval`: generate G responses per row with vLLM, score them, report per task and overall.

    golong eval --model PATH --data FILE [FILE ...] [--g N] [--out report.json]

Sampling follows the paper's validation setting (temperature 0.6, top-p 0.95). Metrics, per task and
over all rows (`overall`), with r_ij the reward of response j of row i and G responses per row:

    mean_score = mean over all scored responses of r_ij
    avg@G      = mean over rows of (1/G) sum_j r_ij         (equal to mean_score when every row got G)
    pass@1     = mean over rows of c_i / G,  c_i = #{j : r_ij >= pass_threshold}
                 (the unbiased pass@k estimator 1 - C(G - c, k) / C(G, k) at k = 1)

`macro` averages each metric over tasks with equal weight (the paper's "Avg." over benchmarks).
Under torchrun every rollout data-parallel group generates its share of the rows; rank 0 writes
the report. The same generate-and-score pass drives `golong data calibrate`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from golong.data.config import DataConfig
from golong.data.schema import Example


@dataclass
class ScoredGroups:
    """The rewards of G responses for each of a list of examples."""

    scores: list[list[float]]  # (num_examples, G); [] for a row that was not generated (prompt too long)
    responses: list[list[str]]  # (num_examples, G) the decoded responses that were scored
    num_too_long: int  # rows whose prompt exceeds data.max_prompt_length (or the engine's limit)
    num_truncated: int  # responses cut at max_tokens


def stop_token_ids(model_path: str, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos])
    except OSError:  # no generation_config.json: the tokenizer's EOS is the only stop token
        pass
    return {i for i in ids if i is not None}


def response_text(tokenizer, ids: list[int], stop_ids: set[int]) -> str:
    """A response as the reward reads it: the final stop token dropped, special tokens such as
    `</think>` kept (the reasoning-block rules need them)."""
    if ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


def generate_and_score(examples: list[Example], model_path: str, rollout_cfg, reward_cfg,
                       data_cfg: DataConfig) -> ScoredGroups:
    """rollout_cfg.n responses per example from the model at `model_path`, each scored by its reward.

    Collective under torchrun: every rank calls it with the same examples and gets all the scores.
    """
    from transformers import AutoTokenizer

    from golong.data.prompts import encode_prompts
    from golong.rewards import RewardScorer, ScoreItem
    from golong.rollout import RolloutEngine
    from golong.trainer.distributed import all_gather_objects, init_world

    world = init_world()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = encode_prompts(examples, tokenizer, data_cfg)
    fits = [i for i, n in enumerate(prompts.lengths) if n <= data_cfg.max_prompt_length]
    longest = max((int(prompts.lengths[i]) for i in fits), default=1)
    engine = RolloutEngine(rollout_cfg, model_path, max_model_len=longest + rollout_cfg.max_response_length)
    try:
        mine = fits[engine.dp_rank::engine.dp_size]
        batch = engine.generate([prompts[i] for i in mine])
        stop_ids = stop_token_ids(model_path, tokenizer)
        texts = [response_text(tokenizer, ids, stop_ids) for ids in batch.response_ids]
        items = [ScoreItem(examples[mine[k]].reward_type, text, examples[mine[k]].ground_truth)
                 for k, text in zip(batch.prompt_index, texts)]
        scorer = RewardScorer(reward_cfg)
        try:
            scored = scorer.score(items).scores
        finally:
            scorer.close()
        local: dict[int, tuple[list[float], list[str]]] = {mine[k]: ([], []) for k in batch.prompt_index}
        for k, text, score in zip(batch.prompt_index, texts, scored):
            local[mine[k]][0].append(float(score))
            local[mine[k]][1].append(text)
        # Gather before closing: vLLM's shutdown destroys the process group (RolloutEngine.close).
        # Ranks of one tensor-parallel group hold the same results; the dict keeps one copy.
        parts = dict(all_gather_objects((engine.dp_rank, (local, sum(batch.truncated))), world))
    finally:
        engine.close()
    groups = {i: group for local, _ in parts.values() for i, group in local.items()}
    scores = [groups[i][0] if i in groups else [] for i in range(len(examples))]
    return ScoredGroups(scores=scores, responses=[groups[i][1] if i in groups else [] for i in range(len(examples))],
                        num_too_long=len(examples) - len(groups),
                        num_truncated=sum(truncated for _, truncated in parts.values()))


def _metrics(groups: list[list[float]], pass_threshold: float) -> dict:
    """mean_score, avg@G and pass@1 (module docstring) of the rows whose score lists are `groups`."""
    groups = [g for g in groups if g]
    responses = [s for g in groups for s in g]
    if not groups:
        return {"rows": 0, "responses": 0, "mean_score": None, "avg@G": None, "pass@1": None}
    return {
        "rows": len(groups),
        "responses": len(responses),
        "mean_score": sum(responses) / len(responses),
        "avg@G": sum(sum(g) / len(g) for g in groups) / len(groups),
        "pass@1": sum(sum(s >= pass_threshold for s in g) / len(g) for g in groups) / len(groups),
    }


def eval_report(examples: list[Example], scores: list[list[float]], pass_threshold: float) -> dict:
    """Per-task, overall and macro metrics from each example's G rewards."""
    tasks = sorted({e.task for e in examples})
    per_task = {t: _metrics([s for e, s in zip(examples, scores) if e.task == t], pass_threshold) for t in tasks}
    scored_tasks = [m for m in per_task.values() if m["rows"]]
    macro = {k: (sum(m[k] for m in scored_tasks) / len(scored_tasks) if scored_tasks else None)
             for k in ("mean_score", "avg@G", "pass@1")}
    return {"tasks": per_task, "overall": _metrics(scores, pass_threshold), "macro": macro}


def format_table(report: dict) -> str:
    rows = [(task, m) for task, m in report["tasks"].items()] + [("overall", report["overall"])]
    out = [f"{'task':<10}{'rows':>7}{'responses':>11}{'mean_score':>12}{'avg@G':>9}{'pass@1':>9}"]
    for name, m in rows:
        cells = "".join(f"{m[k]:>{w}.4f}" if m[k] is not None else f"{'-':>{w}}"
                        for k, w in (("mean_score", 12), ("avg@G", 9), ("pass@1", 9)))
        out.append(f"{name:<10}{m['rows']:>7}{m['responses']:>11}{cells}")
    macro = report["macro"]
    if macro["avg@G"] is not None:
        out.append(f"{'macro':<10}{'':>18}{macro['mean_score']:>12.4f}{macro['avg@G']:>9.4f}{macro['pass@1']:>9.4f}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Command line


def add_sampling_args(p: argparse.ArgumentParser, g: int, temperature: float, top_p: float) -> None:
    """Options shared by `golong eval` and `golong data calibrate`."""
    p.add_argument("--g", type=int, default=g, help=f"responses per row (default {g})")
    p.add_argument("--temperature", type=float, default=temperature, help=f"sampling temperature (default {temperature})")
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    p.add_argument("--max-tokens", type=int, default=16384, help="most tokens per response (default 16384)")
    p.add_argument("--max-prompt-length", type=int, default=163840,
                   help="rows with longer prompts are skipped and counted (default 163840)")
    p.add_argument("--no-thinking", action="store_true", help="chat template with enable_thinking=False")
    p.add_argument("--require-think-close", action="store_true",
                   help="a response without </think> scores 0 (thinking models whose template opens <think>)")
    p.add_argument("--pass-threshold", type=float,
                   help="a response passes when its reward is at least this (default: reward.pass_threshold, 0.5)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism (default 1)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="share of accelerator memory (CPU: of host memory) vLLM may take "
                        "(default: rollout.gpu_memory_utilization)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def configs_from_args(args: argparse.Namespace):
    """The rollout, reward and data sections (RolloutConfig, RewardConfig, DataConfig) the sampling
    options describe, validated; options left unset keep the sections' defaults."""
    from golong.configlib import build
    from golong.rewards.config import RewardConfig
    from golong.rollout.config import RolloutConfig

    def given(**values):
        return {k: v for k, v in values.items() if v is not None}

    rollout = build(RolloutConfig, given(
        n=args.g, temperature=args.temperature, top_p=args.top_p, max_response_length=args.max_tokens,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed))
    reward = build(RewardConfig, given(pass_threshold=args.pass_threshold, require_think_close=args.require_think_close))
    data = build(DataConfig, {"max_prompt_length": args.max_prompt_length, "enable_thinking": not args.no_thinking})
    return rollout, reward, data


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--data", required=True, nargs="+", help="native rows or released records (.jsonl/.parquet)")
    p.add_argument("--out", default="eval_report.json", help="JSON report path (default eval_report.json)")
    p.add_argument("--samples-out", help="also write every row's responses and scores here (.jsonl)")
    add_sampling_args(p, g=4, temperature=0.6, top_p=0.95)  # section 5.1 validation sampling
    p.set_defaults(func=run_eval)


def add_eval_command(subparsers) -> argparse.ArgumentParser:
    """Register `golong eval` on an argparse subparsers object."""
    p = subparsers.add_parser("eval", help="generate with vLLM, score, and report per task",
                              description=__doc__.split("\n\n")[0])
    _add_eval_args(p)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from golong.data.loader import load_examples

    rollout_cfg, reward_cfg, data_cfg = configs_from_args(args)
    examples = load_examples(args.data, data_cfg).examples
    groups = generate_and_score(examples, args.model, rollout_cfg, reward_cfg, data_cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    threshold = reward_cfg.pass_threshold
    report = {
        "model": args.model, "data": args.data, "g": rollout_cfg.n, "temperature": rollout_cfg.temperature,
        "top_p": rollout_cfg.top_p, "max_tokens": rollout_cfg.max_response_length, "pass_threshold": threshold,
        **eval_report(examples, groups.scores, threshold),
        "rows_skipped_too_long": groups.num_too_long, "responses_truncated": groups.num_truncated,
    }
    write_json(args.out, report)
    if args.samples_out:
        from golong.data.rowio import write_rows

        write_rows(args.samples_out, [
            {"id": e.id, "task": e.task, "reward_type": e.reward_type, "file": e.file, "row": e.row,
             "responses": responses, "scores": scores}
            for e, responses, scores in zip(examples, groups.responses, groups.scores) if scores])
    print(format_table(report))
    print(f"{groups.num_too_long} rows skipped (prompt too long), {groups.num_truncated} responses truncated; "
          f"report written to {args.out}")
    return 0


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m golong.eval --model PATH --data FILE ...`, the same as `golong eval ...`."""
    parser = argparse.ArgumentParser(prog="golong eval", description=__doc__.split("\n\n")[0])
    _add_eval_args(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
