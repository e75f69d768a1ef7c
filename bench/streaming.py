"""Streaming rollouts against sync rounds on a long-tailed response-length workload: generation seconds
per trained group, whole-step seconds and the trained groups' response length, three real 2-rank
`golong train` runs (torchrun, DeepSpeed ZeRO-3, in-process vLLM) in one invocation.

The workload is a real model sampled by real vLLM, built so that response lengths are long-tailed: the
tiny Qwen3 (golong.tiny_model) with every layer's attention o_proj and MLP down_proj zeroed, so the last
hidden state is the current token's embedding and the model is a Markov chain over tokens, whose
embedding and (untied) lm_head rows are set so that

    after the prompt's last token   the first response token is in L with probability --p-long (0.1), else in S
    after an S token                EOS (<|im_end|>) with probability --p-stop (1/8), else another S token
    after an L token                another L token; EOS ~never (e^-30): the response runs to max_response_length
    any other token                 (prompt words, special tokens) ~never sampled

so most responses are short (1 + geometric: mean 1 + 1/p_stop = 9 tokens, EOS included) and a few hit
max_response_length; with G = --n 4 responses per group, 1 - 0.9^4 = 34% of the groups hold a long one:
the response that makes a sync round wait. The bench prints the chain's probabilities as the model computes
them and the length distribution they give; every run's truncated ratio shows what vLLM sampled.

Rewards are ~0 everywhere (the responses are token soup), so the runs train WITHOUT dynamic sampling:
every finished group counts towards data.prompts_per_step (algorithm.dynamic_sampling.enabled=false), and
the all-zero advantages leave the chain's weights as they are (trainer.weight_decay=0).

Modes, every other setting identical: sync (whole rounds); streaming partial=false (in-flight responses
aborted, their prompts handed back); streaming partial=true (in-flight responses kept and continued next
step). --steps steps each, step 1 left out of the means as warm-up. Printed per mode: generation seconds
per trained group (time/rollout / batch/trained_prompts) and time/step, as ratios to sync's; the trained
groups' mean response length and its ratio to sync's; partial responses, policy lag and aborted
responses per step.

    PYTHONPATH=. .venv/bin/python bench/streaming.py          # --steps 8 --max-response-length 256
    PYTHONPATH=. .venv/bin/python bench/streaming.py --stream-max-groups 16 --stream-check-steps 4
    PYTHONPATH=. .venv/bin/python bench/streaming.py --modes sync,stream-partial --steps 12 --stream-max-groups 48
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NEVER = -30.0  # logit of what a state never emits (e^-30 against logits near 0)


def build_markov_model(out_dir: str, p_long: float, p_stop: float) -> dict:
    """The tiny Qwen3 rewritten into the long-tailed Markov chain above; returns its token sets."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

    from golong.tiny_model import build_tiny_model

    build_tiny_model(out_dir)
    config = AutoConfig.from_pretrained(out_dir)
    assert not config.tie_word_embeddings, "the chain needs separate embedding and lm_head rows"
    tok = AutoTokenizer.from_pretrained(out_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>")}
    # merged BPE tokens (after the 256 byte tokens and the specials) decode to whole UTF-8 text
    words = [i for i in range(259, len(tok)) if i not in special]
    half = len(words) // 2
    short, long_ = words[:half], words[half:]

    model = Qwen3ForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    hidden, vocab = config.hidden_size, config.vocab_size
    START, S, L = 0, 1, 2  # the hidden dimension that marks each state
    scale = math.sqrt(hidden)  # RMSNorm of a one-hot row of any size: sqrt(hidden) in its dimension
    logits = torch.full((3, vocab), NEVER)  # [state, next token]
    logits[START, short] = math.log((1 - p_long) / len(short))
    logits[START, long_] = math.log(p_long / len(long_))
    logits[S, short] = math.log((1 - p_stop) / len(short))
    logits[S, eos] = math.log(p_stop)
    logits[L, long_] = math.log(1 / len(long_))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = torch.zeros(vocab, hidden)
        embed[:, START] = 1.0  # every token outside S and L (the prompt's last one included) is the start state
        embed[short] = 0.0
        embed[short, S] = 1.0
        embed[long_] = 0.0
        embed[long_, L] = 1.0
        model.model.embed_tokens.weight.copy_(embed)
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(vocab, hidden)
        head[:, :3] = logits.T / scale
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out_dir, safe_serialization=True)
    return {"short": short, "long": long_, "eos": eos}


def check_chain(model_dir: str, tokens: dict, prompt_ids: list[int], max_len: int, p_long: float, p_stop: float):
    """The chain's probabilities as the saved model computes them (float32 and bfloat16, the engine's
    dtype) after a real prompt, and the response-length distribution they imply."""
    import torch
    from transformers import AutoModelForCausalLM

    short, long_, eos = tokens["short"], tokens["long"], tokens["eos"]
    print(f"chain: |S| = {len(short)}, |L| = {len(long_)} tokens, EOS = {eos}; target P(first in L) = {p_long}, "
          f"P(EOS | S) = {p_stop:.4f}")
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        contexts = {"after prompt": prompt_ids, "after S": prompt_ids + short[:3], "after L": prompt_ids + long_[:3]}
        row = []
        for name, ids in contexts.items():
            with torch.no_grad():
                p = model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
            row.append(f"{name}: S {p[short].sum():.3f} L {p[long_].sum():.3f} EOS {p[eos]:.2e}")
        print(f"  {str(dtype).split('.')[-1]:>8}  " + "; ".join(row))
    # a short response: one S token, then S tokens until EOS (EOS counted): 1 + geometric(p_stop) tokens
    print(f"  response length (tokens, EOS included): short ones 1 + geometric, mean {1 + 1 / p_stop:.1f}, "
          f"P(> 16) = {(1 - p_stop) ** 15:.3f}, P(> 32) = {(1 - p_stop) ** 31:.3f}; "
          f"long ones {max_len} (truncated), {p_long:.0%} of responses")


def write_prompts(path: str, rows: int) -> None:
    """Native T1 rows; the answers are never produced, so every reward is ~0."""
    colours = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
    with open(path, "w") as f:
        for i in range(rows):
            context = (f"The quick brown fox number {i} jumps over the lazy dog. "
                       f"The colour is {colours[i % len(colours)]}.")
            f.write(json.dumps({"id": f"bench-{i}", "task": "T1", "context": context,
                                "question": "What is the colour?", "answer": colours[i % len(colours)]}) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name: str, out_dir: str, model_dir: str, data: str, args, extra: list[str]) -> list[dict]:
    overrides = [
        f"model.path={model_dir}", f"data.train_files=[{data}]", f"trainer.output_dir={out_dir}",
        f"trainer.total_steps={args.steps}", "trainer.save_every=0", "trainer.export_hf=false", "logging.plot=false",
        "logging.progress_bar=false", "trainer.weight_decay=0.0",
        f"data.prompts_per_step={args.prompts_per_step}", f"data.max_prompt_length={args.max_prompt_length}",
        f"rollout.n={args.n}", f"rollout.max_response_length={args.max_response_length}",
        "algorithm.dynamic_sampling.enabled=false", "reward.num_workers=1",
        f"rollout.stream_check_steps={args.stream_check_steps}", f"rollout.stream_max_groups={args.stream_max_groups}",
        *extra,
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "golong", "train", "recipes/tiny-cpu.yaml", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name}: golong train failed ({proc.returncode})\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    print(f"  {name}: {len(records)} steps, {time.perf_counter() - start:.0f} s in all (start-up included)")
    return records


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def summarize(records: list[dict]) -> dict:
    steps = records[1:] if len(records) > 1 else records  # step 1: warm-up
    get = lambda r, k: float(r.get(k, 0.0))  # noqa: E731
    return {
        "gen_per_group": mean(get(r, "time/rollout") / max(get(r, "batch/trained_prompts"), 1) for r in steps),
        "gen": mean(get(r, "time/rollout") for r in steps),
        "step": mean(get(r, "time/step") for r in steps),
        "groups": mean(get(r, "batch/trained_prompts") for r in steps),
        "trained_len": mean(get(r, "response_length/trained_mean") for r in steps),
        "finished_len": mean(get(r, "response_length/mean") for r in steps),
        "truncated": mean(get(r, "response_length/truncated_ratio") for r in steps),
        "partial": mean(get(r, "rollout/partial_responses") for r in steps),
        "lag": mean(get(r, "rollout/policy_lag_max") for r in steps),
        "aborted": mean(get(r, "rollout/aborted") for r in steps),
        "carried": mean(get(r, "rollout/carried_groups") for r in steps),
        "drawn": mean(get(r, "sampling/prompts_drawn") for r in steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="steps per run (step 1 is left out of the means)")
    ap.add_argument("--max-response-length", type=int, default=256)
    ap.add_argument("--max-prompt-length", type=int, default=128)
    ap.add_argument("--prompts-per-step", type=int, default=16, help="groups trained per step")
    ap.add_argument("--n", type=int, default=4, help="responses per group (G)")
    ap.add_argument("--p-long", type=float, default=0.1, help="probability that a response is long")
    ap.add_argument("--p-stop", type=float, default=1 / 8, help="EOS probability after a short-set token")
    ap.add_argument("--stream-check-steps", type=int, default=8, help="rollout.stream_check_steps")
    ap.add_argument("--stream-max-groups", type=int, default=0, help="rollout.stream_max_groups (0: a round's share)")
    ap.add_argument("--modes", default="sync,stream,stream-partial", help="comma-separated subset, in this order")
    ap.add_argument("--keep", action="store_true", help="keep the model, prompts and run folders")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    work = tempfile.mkdtemp(prefix="golong-bench-streaming-")
    try:
        model_dir, data = os.path.join(work, "model"), os.path.join(work, "train.jsonl")
        tokens = build_markov_model(model_dir, args.p_long, args.p_stop)
        write_prompts(data, 4 * args.prompts_per_step * (args.steps + 2))
        tok = AutoTokenizer.from_pretrained(model_dir)
        sample = tok.apply_chat_template([{"role": "user", "content": "The colour is red. What is the colour?"}],
                                         add_generation_prompt=True, enable_thinking=False, tokenize=True,
                                         return_dict=False)
        check_chain(model_dir, tokens, list(sample), args.max_response_length, args.p_long, args.p_stop)
        print(f"  groups of G = {args.n} holding a long response: {1 - (1 - args.p_long) ** args.n:.0%}")
        print(f"runs: {args.steps} steps x {args.prompts_per_step} groups x G = {args.n}, max_response_length "
              f"{args.max_response_length}, 2 ranks; stream_check_steps {args.stream_check_steps}, "
              f"stream_max_groups {args.stream_max_groups or 'a round share'}")
        modes = {"sync": ["rollout.mode=sync"],
                 "stream": ["rollout.mode=streaming", "rollout.partial=false"],
                 "stream-partial": ["rollout.mode=streaming", "rollout.partial=true"]}
        chosen = [m for m in args.modes.split(",") if m]
        results = {m: summarize(train(m, os.path.join(work, m), model_dir, data, args, modes[m])) for m in chosen}
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    base = results.get("sync") or next(iter(results.values()))
    ratio = lambda m, k: results[m][k] / base[k] if base[k] else float("nan")  # noqa: E731
    print(f"\nmeans over steps 2-{args.steps}; ratios against {'sync' if 'sync' in results else chosen[0]}")
    print("| mode | gen s / trained group | ratio | time/step s | ratio | trained groups | trained resp. len | ratio "
          "| all finished len | truncated | partial resp. | policy lag max | aborted | carried groups | prompts drawn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, r in results.items():
        print(f"| {m} | {r['gen_per_group']:.3f} | {ratio(m, 'gen_per_group'):.2f}x | {r['step']:.2f} | "
              f"{ratio(m, 'step'):.2f}x | {r['groups']:.1f} | {r['trained_len']:.1f} | {ratio(m, 'trained_len'):.2f}x | "
              f"{r['finished_len']:.1f} | {r['truncated']:.3f} | {r['partial']:.1f} | {r['lag']:.1f} | "
              f"{r['aborted']:.1f} | {r['carried']:.1f} | {r['drawn']:.1f} |")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
