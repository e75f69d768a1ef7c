"""Host-side time to turn a step's rollouts into a packed prompt-once row, at the recipes' row size.

One 360,448-token row (the recipes' trainer.micro_batch_max_tokens): one prompt of 98,304 tokens and its
16 responses of 16,384 tokens each, packed prompt-once. Timed from what the collector hands the trainer
(the prompt set's int32 ids, each response's int32 ids and float32 log-probs) to the PackedMicroBatch
the engine moves to the device: building the training records, planning units, packing the row.

The baseline is the same measurement on an older commit (default: the last one before the Group data
model, #26), checked out into a temporary git worktree and run in its own process in this same run;
the script picks the API the checkout has (Group + pack_groups, or TrainSample + pack_units).

    python bench/pack_time.py                      # this tree vs the baseline commit, ratio printed
    python bench/pack_time.py --baseline REF --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

BASELINE = "c790611"  # main before the Group data model (#26 stage B): TrainSample per response
PROMPT_TOKENS, RESPONSES, RESPONSE_TOKENS = 98_304, 16, 16_384  # 98,304 + 16 x 16,384 = 360,448 tokens
ROW_TOKENS = PROMPT_TOKENS + RESPONSES * RESPONSE_TOKENS


def workload():
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 150_000, PROMPT_TOKENS + 1000, dtype=np.int64).astype(np.int32)  # a prompt set of two
    offsets = np.array([0, 1000, PROMPT_TOKENS + 1000], dtype=np.int64)
    responses = [rng.integers(0, 150_000, RESPONSE_TOKENS).astype(np.int32) for _ in range(RESPONSES)]
    logprobs = [rng.normal(size=RESPONSE_TOKENS).astype(np.float32) for _ in range(RESPONSES)]
    return flat, offsets, responses, logprobs


def pack_once(flat, offsets, responses, logprobs):
    """What a step does between the collector and the engine, with whichever API this checkout has."""
    import torch

    from golong.data.prompts import PromptIds
    from golong.trainer import batch, packing

    prompts, advantages = PromptIds(flat, offsets), np.linspace(-1, 1, RESPONSES)
    if hasattr(batch, "Group"):
        groups = [batch.Group(prompt_ids=prompts.view(1), response_ids=responses, advantages=advantages,
                              rollout_logprobs=logprobs, group_id=0)]
        units = packing.plan_units(groups, ROW_TOKENS, True)
        return batch.pack_groups(units)
    samples = [batch.TrainSample(prompt_ids=prompts[1], response_ids=r.tolist(), advantage=float(a),
                                 rollout_logprobs=torch.from_numpy(lp), group_id=0)
               for r, lp, a in zip(responses, logprobs, advantages)]
    units = packing.plan_units(samples, ROW_TOKENS, True)
    return batch.pack_units([[samples[i] for i in u] for u in units])


def measure(repeats: int) -> dict:
    data = workload()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mb = pack_once(*data)
        times.append(time.perf_counter() - start)
    assert mb.input_ids.shape[1] == ROW_TOKENS and mb.cu_seqlens.tolist() == [0, ROW_TOKENS]
    return {"best_s": min(times), "median_s": float(np.median(times)), "row_tokens": ROW_TOKENS}


def measure_at(ref: str, repeats: int) -> dict:
    """The same measurement on commit `ref`, in a temporary worktree, in its own process."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "baseline")
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", "-q", tree, ref], check=True)
        try:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure-only", "--repeats", str(repeats)],
                                 env={**os.environ, "PYTHONPATH": tree}, cwd=tree, capture_output=True, text=True, check=True)
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", tree], check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git ref of the baseline (default {BASELINE})")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.repeats)))
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    now = measure(args.repeats)
    before = measure_at(args.baseline, args.repeats)
    print(f"one prompt-once row of {ROW_TOKENS:,} tokens (prompt {PROMPT_TOKENS:,} + {RESPONSES} x {RESPONSE_TOKENS:,}), "
          f"host side, best of {args.repeats}")
    print(f"  baseline {args.baseline}: {before['best_s']:.3f} s (median {before['median_s']:.3f})")
    print(f"  this tree:        {now['best_s']:.3f} s (median {now['median_s']:.3f})")
    print(f"  ratio this/baseline: {now['best_s'] / before['best_s']:.3f}  ({before['best_s'] / now['best_s']:.1f}x faster)")


if __name__ == "__main__":
    main()
