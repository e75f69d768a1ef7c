"""`golong eval`: generate G responses per row with vLLM, score them, report per task and overall.

    golong eval --model PATH --data FILE [FILE ...] [--g N] [--out report.json]
    golong eval --model PATH --benchmark longbench_v2 --data data.json        # one released benchmark
    golong eval --model PATH --suite paper --data longbench_v2=data.json mrcr=2needle.parquet ...

With --benchmark or --suite, --data holds released benchmark files, prompted and scored as each benchmark's
official code does (golong/benchmarks/, the paper's Table 5); without, golong's own rows as below.

Sampling follows the paper's validation setting (temperature 0.6, top-p 0.95). Metrics, per task and
over all rows (`overall`), with r_ij the reward of response j of row i and G responses per row:

    mean_score = mean over all scored responses of r_ij
    avg@G      = mean over rows of (1/G) sum_j r_ij         (equal to mean_score when every row got G)
    pass@1     = mean over rows of c_i / G,  c_i = #{j : r_ij >= pass_threshold}
                 (the unbiased pass@k estimator 1 - C(G - c, k) / C(G, k) at k = 1)

`macro` averages each metric over tasks with equal weight (the paper's "Avg." over benchmarks).
Under torchrun every rollout data-parallel group generates its share of the rows; rank 0 writes
the report. Rows are generated and scored by the rollout collector (golong/rollout/collect.py), as in
training and `golong data calibrate`.
"""
from __future__ import annotations

import argparse
import sys

from golong.data.schema import Example


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


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--data", required=True, nargs="+",
                   help="native rows or released records (.jsonl/.parquet); with --benchmark, that benchmark's "
                        "released files; with --suite, NAME=FILE entries or a directory of NAME/ folders")
    p.add_argument("--out", default="eval_report.json", help="JSON report path (default eval_report.json)")
    p.add_argument("--samples-out", help="also write every row's responses and scores here (.jsonl)")
    from golong.rollout.options import add_sampling_args

    add_sampling_args(p, g=4, temperature=0.6, top_p=0.95)  # section 5.1 validation sampling
    from golong.benchmarks.run import add_benchmark_args

    add_benchmark_args(p)
    p.set_defaults(func=run_eval)


def add_eval_command(subparsers) -> argparse.ArgumentParser:
    """Register `golong eval` on an argparse subparsers object."""
    p = subparsers.add_parser("eval", help="generate with vLLM, score, and report per task",
                              description=__doc__.split("\n\n")[0])
    _add_eval_args(p)
    return p


def run_eval(args: argparse.Namespace) -> int:
    if getattr(args, "benchmark", None) or getattr(args, "suite", None):
        from golong.benchmarks.run import run_benchmarks

        return run_benchmarks(args)
    from golong.data.loader import load_examples
    from golong.model_check import check_model_path
    from golong.rollout.collect import collect_for_examples
    from golong.rollout.options import configs_from_args
    from golong.world import init_world

    rollout_cfg, reward_cfg, data_cfg = configs_from_args(args)
    examples = load_examples(args.data, data_cfg).examples
    check_model_path(args.model, "--model")
    world = init_world()
    rollouts = collect_for_examples(examples, args.model, rollout_cfg, reward_cfg, data_cfg, world, model_key="--model")
    if not world.is_main:
        return 0
    scores, responses = rollouts.per_example(len(examples))
    threshold = reward_cfg.pass_threshold
    num_truncated = int(rollouts.truncated.sum())
    report = {
        "model": args.model, "data": args.data, "g": rollout_cfg.n, "temperature": rollout_cfg.temperature,
        "top_p": rollout_cfg.top_p, "max_tokens": rollout_cfg.max_response_length, "pass_threshold": threshold,
        **eval_report(examples, scores, threshold),
        "rows_skipped_too_long": rollouts.num_filtered, "responses_truncated": num_truncated,
    }
    from golong.data.rowio import write_json

    write_json(args.out, report)
    if args.samples_out:
        from golong.data.rowio import write_rows

        write_rows(args.samples_out, [
            {"id": e.id, "task": e.task, "reward_type": e.reward_type, "file": e.file, "row": e.row,
             "responses": texts, "scores": row_scores}
            for e, texts, row_scores in zip(examples, responses, scores) if row_scores])
    print(format_table(report))
    print(f"{rollouts.num_filtered} rows skipped (prompt too long), {num_truncated} responses truncated; "
          f"report written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m golong.eval --model PATH --data FILE ...`, the same as `golong eval ...`."""
    parser = argparse.ArgumentParser(prog="golong eval", description=__doc__.split("\n\n")[0])
    _add_eval_args(parser)
    from golong.console import run_command

    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
