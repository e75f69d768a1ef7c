"""Cross-task advantage scale (paper Figure 5) and time per call, on synthetic nine-task batches.

Each batch has 128 prompts x 16 responses = 2,048 (Table 12), prompts drawn by Table 1's task
ratios, rewards drawn per task with that task's reward type (binary EM / accuracy / math_verify /
SubEM, continuous F1 / IoU / ROUGE-L, graded NDCG, pairwise fractions). Every estimator runs on
each batch separately (task statistics are per batch, as in training); the per-task mean |A| is
pooled over the whole pass of batches, then its coefficient of variation across the nine tasks is
printed (Figure 5: Dr.GRPO 0.54, GRPO 0.34, TMN 0.18 in the paper's run).

    .venv/bin/python bench/advantage_scale.py [--batches 200] [--seed 0]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from golong.advantage import build

PROMPTS, G = 128, 16


def binary(rng, difficulty_a, difficulty_b):
    def draw(n):
        q = rng.beta(difficulty_a, difficulty_b, size=(n, 1))  # per-prompt success probability
        return (rng.random((n, G)) < q).astype(np.float64)
    return draw


def graded(rng, spread):
    """Continuous rewards around a per-prompt level q with within-prompt noise `spread`."""
    def draw(n):
        q = rng.beta(2, 2, size=(n, 1))
        return np.clip(q + spread * rng.standard_normal((n, G)), 0, 1)
    return draw


def build_tasks(rng):
    # (name, reward type, Table 1 share, reward generator)
    return [
        ("T1", "em", 0.344, binary(rng, 0.6, 0.6)),
        ("T2", "accuracy", 0.296, binary(rng, 1.5, 1.0)),
        ("T3", "f1", 0.151, graded(rng, 0.25)),
        ("T4", "math_verify", 0.133, binary(rng, 0.5, 0.8)),
        ("T5", "iou", 0.041, graded(rng, 0.15)),
        ("T6", "subem", 0.016, binary(rng, 1.0, 1.0)),
        # NDCG: graded relevance, high and tight (most rankings are mostly right).
        ("T7", "ndcg", 0.005, lambda n: np.clip(0.8 + 0.1 * rng.beta(2, 2, (n, 1)) + 0.04 * rng.standard_normal((n, G)), 0, 1)),
        # Pairwise: fraction of 10 ordered pairs right.
        ("T8", "pairwise", 0.008, lambda n: rng.binomial(10, rng.beta(3, 2, (n, 1)), (n, G)) / 10),
        # ROUGE-L: summaries overlap the reference a little, with little spread.
        ("T9", "rouge_l", 0.005, lambda n: np.clip(0.25 + 0.1 * rng.random((n, 1)) + 0.03 * rng.standard_normal((n, G)), 0, 1)),
    ]


def draw_batch(rng, tasks):
    shares = np.array([t[2] for t in tasks])
    counts = rng.multinomial(PROMPTS, shares / shares.sum())
    rewards, task_ids = [], []
    for k, (n, task) in enumerate(zip(counts, tasks)):
        if n:
            rewards.append(task[3](n).reshape(-1))
            task_ids.append(np.full(n * G, k))
    rewards = torch.from_numpy(np.concatenate(rewards))
    groups = torch.arange(PROMPTS).repeat_interleave(G)
    return rewards, groups, torch.from_numpy(np.concatenate(task_ids))


def loop_grpo(rewards, groups, task_ids):
    """Baseline for timing: GRPO with a Python loop over responses (verl's compute_grpo_outcome_advantage)."""
    by_group = defaultdict(list)
    for i in range(len(rewards)):
        by_group[int(groups[i])].append(rewards[i])
    stats = {g: (torch.stack(v).mean(), torch.stack(v).std()) for g, v in by_group.items()}
    out = torch.empty_like(rewards)
    for i in range(len(rewards)):
        mean, std = stats[int(groups[i])]
        out[i] = (rewards[i] - mean) / (std + 1e-6)
    return out


def median_ms(fn, args, repeats):
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches of 2,048 responses in the pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    tasks = build_tasks(rng)
    estimators = {
        "dr_grpo": build("dr_grpo"),
        "grpo": build("grpo"),
        "tmn (no reweight)": build("tmn_reweight", reweight=False),
        "tmn_reweight": build("tmn_reweight"),
        "task_std (QwenLong-L1.5)": build("task_std"),
    }

    abs_sum = {name: np.zeros(len(tasks)) for name in estimators}
    count = np.zeros(len(tasks))
    batch_cv = defaultdict(list)
    zero_var = np.zeros(len(tasks))
    for _ in range(args.batches):
        rewards, groups, task_ids = draw_batch(rng, tasks)
        rows = np.bincount(task_ids.numpy(), minlength=len(tasks))
        count += rows
        r = rewards.view(PROMPTS, G)
        constant = (r.amax(1) == r.amin(1)).numpy()
        zero_var += np.bincount(task_ids.view(PROMPTS, G)[:, 0].numpy(), weights=constant, minlength=len(tasks))
        for name, estimator in estimators.items():
            a = estimator(rewards, groups, task_ids).double().abs()
            abs_sum[name] += np.bincount(task_ids.numpy(), weights=a.numpy(), minlength=len(tasks))
            batch_cv[name].append(estimator.last_stats.abs_mean_cv)

    print(f"{args.batches} batches x {PROMPTS} prompts x {G} responses; prompts per task over the pass:")
    print("  " + "  ".join(f"{t[0]}({t[1]}) {int(c / G)}" for t, c in zip(tasks, count)))
    print("  zero-variance prompt share: " + "  ".join(f"{t[0]} {z / (c / G):.2f}" for t, z, c in zip(tasks, zero_var, count)))
    print("\nFigure 5 measure: per-task mean |A| / cross-task mean, and its coefficient of variation (population std)")
    print(f"{'estimator':26s}" + "".join(f"{t[0]:>6s}" for t in tasks) + "   CV(pass)  CV(per batch, mean)")
    for name in estimators:
        per_task = abs_sum[name] / count
        normalised = per_task / per_task.mean()
        cv = per_task.std() / per_task.mean()
        print(f"{name:26s}" + "".join(f"{v:6.2f}" for v in normalised) + f"   {cv:8.3f}  {np.mean(batch_cv[name]):8.3f}")

    print(f"\nTime per call, {PROMPTS * G} responses, 1 CPU thread (median of 200; baseline: Python-loop GRPO)")
    rewards, groups, task_ids = draw_batch(rng, tasks)
    baseline = median_ms(loop_grpo, (rewards, groups, task_ids), repeats=5)
    print(f"{'loop GRPO (baseline)':26s} {baseline:8.2f} ms   1.0x")
    for name, estimator in estimators.items():
        ms = median_ms(estimator, (rewards, groups, task_ids), repeats=200)
        print(f"{name:26s} {ms:8.2f} ms   {baseline / ms:.0f}x faster")


if __name__ == "__main__":
    main()
