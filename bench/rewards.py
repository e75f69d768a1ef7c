"""Reward scoring throughput: the worker pool against serial in-process scoring, same run, same items.

2,048 synthetic responses (one training step: 128 prompts x 16 responses, Table 12) over all nine
reward types in roughly Table 1's shares, each with a reasoning block of 2K-20K characters before
`</think>`, answers in appendix B's formats, about half of them right, and about 5% degenerate
outputs (unfinished reasoning, empty, 2 MB strings, endless repetition, binary junk, CJK noise,
exponent towers and nested LaTeX for math, malformed JSON for tables).

    OMP_NUM_THREADS=1 .venv/bin/python bench/rewards.py [--items 2048] [--workers 0] [--rounds 2] [--seed 0]

Prints items/s of the pool's first call (with worker start-up), then rounds of serial in-process
scoring and a warm pool call (as in every training step after the first) alternating, so that load
from other jobs on a shared machine hits both; the speedup per round, best against best and the
median of the rounds, the slowest item, the items that ran past `timeout_s`, and whether the pool's
scores equal the serial ones.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import time
from collections import Counter

from golong.rewards import RewardConfig, RewardScorer, ScoreItem, compute_score
from golong.rewards.math_rewards import MATH_VERIFY_TIMEOUT_S

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more about up out who them some "
    "could him into its then two time these may other than first any new very my also after years only over such "
    "report revenue contract clause section court ruling plaintiff defendant protocol patient trial dosage results "
    "model data table column value increase decrease quarter annual growth margin policy agreement party witness"
).split()
CJK = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 800))  # 800 Han characters
TASKS = [  # reward type, items out of 2,048 (Table 1's shares, the rare tasks raised to at least ~4%)
    ("em", 500), ("accuracy", 450), ("f1", 300), ("math_verify", 300), ("iou", 150),
    ("subem", 100), ("ndcg", 80), ("pairwise", 80), ("rouge_l", 88),
]


def words(rng, n, vocab=WORDS) -> str:
    return " ".join(rng.choices(vocab, k=n))


def reasoning(rng) -> str:
    return f"<think>\n{words(rng, rng.randint(300, 3000))}\n</think>\n\n"


def em(rng, right):
    gold = f"Project {rng.choice(['Falcon', 'Heron', 'Lynx', 'Otter'])} {rng.randint(1, 99)}"
    return f"[Answer]\n{gold if right else 'Project Crane 7'}", gold


def accuracy(rng, right):
    gold = rng.choice("ABCD")
    said = gold if right else rng.choice([c for c in "ABCD" if c != gold])
    return rng.choice([f"[Answer]\n{said}", f"[Answer]\n({said})", f"The correct answer is ({said})"]), gold


def f1(rng, right):
    gold = [f"Part {i}" for i in rng.sample(range(1, 60), rng.randint(3, 20))]
    said = gold if right else gold[: len(gold) // 2] + [f"Part {i}" for i in rng.sample(range(60, 90), 3)]
    return "[Answer]\n" + "\n".join(said), gold


def math(rng, right):
    a, b = rng.randint(1, 50), rng.randint(51, 99)
    if rng.random() < 0.5:  # a fraction, answered as LaTeX or as a decimal
        gold = f"\\frac{{{a}}}{{{b}}}"
        said = rng.choice([f"\\boxed{{\\frac{{{a}}}{{{b}}}}}", f"{a / b:.6f}"]) if right else f"\\boxed{{{a + 1}/{b}}}"
        return f"so the ratio is {said}", gold
    gold = "\n".join(f"{x / 10:.1f}%" for x in (a, -b))  # several lines, appendix B.6.2
    said = gold if right else f"{a / 10:.1f}%\n{b / 10:.1f}%"
    return f"[Answer]\n{said}", gold


def iou(rng, right):
    rows = [[f"item {i}", rng.randint(1, 500), round(rng.random() * 100, 2)] for i in range(rng.randint(2, 6))]
    gold = json.dumps({"columns": ["name", "count", "share"], "data": rows})
    said = rows if right else rows[1:] + [["item x", 1, 2.0]]
    return f"<answer>```json\n{json.dumps({'columns': ['name', 'count', 'share'], 'data': said})}\n```</answer>", gold


def subem(rng, right):
    shares = [25.0, 25.0, 50.0]
    gold = [f"Cluster_{c} {s:.2f}%" for c, s in zip("ABC", shares)]
    said = gold if right else [f"Cluster_{c} {s:.2f}%" for c, s in zip("ABC", [30.0, 20.0, 50.0])]
    return "[Answer]\n" + "\n".join(said), gold


def ranking(rng, right):
    gold = [f"A{rng.randint(10**6, 10**7)}" for _ in range(rng.randint(5, 15))]
    said = list(gold)
    if not right:
        rng.shuffle(said)
    return "[Answer]\n" + "\n".join(said), gold


def rouge(rng, right):
    vocab = list(CJK) if rng.random() < 0.2 else WORDS
    joiner = "" if vocab is not WORDS else " "
    reference = rng.choices(vocab, k=rng.randint(150, 500))
    keep = 0.7 if right else 0.3
    said = [w if rng.random() < keep else rng.choice(vocab) for w in reference] + rng.choices(vocab, k=rng.randint(0, 300))
    return "[Answer]\n" + joiner.join(said), joiner.join(reference)


ANSWERS = {"em": em, "accuracy": accuracy, "f1": f1, "math_verify": math, "iou": iou,
           "subem": subem, "ndcg": ranking, "pairwise": ranking, "rouge_l": rouge}


def degenerate(rng, reward_type) -> tuple[str, str]:
    """(kind, response) of a degenerate output."""
    kinds = ["unfinished reasoning", "empty", "repetition", "2 MB string", "binary junk", "CJK noise"]
    kinds += {"math_verify": ["exponent tower", "nested LaTeX"], "iou": ["malformed JSON"]}.get(reward_type, [])
    kind = rng.choice(kinds)
    return kind, {
        "unfinished reasoning": lambda: "<think>\n" + "wait, let me check again. " * 20_000,
        "empty": lambda: "",
        "repetition": lambda: "[Answer]\n" + "Part 1\n" * 100_000,
        "2 MB string": lambda: "".join(rng.choices("abcdefgh {}[]()\\^$%.,\n0123456789", k=2_000_000)),
        "binary junk": lambda: bytes(rng.randrange(256) for _ in range(50_000)).decode("latin-1"),
        "CJK noise": lambda: "[答案]\n" + "".join(rng.choices(CJK, k=300_000)),
        "exponent tower": lambda: "[Answer]\n\\boxed{" + "9^{" * 30 + "9" + "}" * 30 + "}",
        "nested LaTeX": lambda: "[Answer]\n\\boxed{" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "}",
        "malformed JSON": lambda: '<answer>{"columns": ["name"], "data": [["item 1"], [' + "[" * 50_000 + "</answer>",
    }[kind]()


def build_items(n: int, seed: int) -> tuple[list[ScoreItem], list[str]]:
    """`n` items (the TASKS mix scaled to n) and the kind of each ("" for a normal response)."""
    rng = random.Random(seed)
    total = sum(count for _, count in TASKS)
    types = [t for t, count in TASKS for _ in range(round(count * n / total))][:n]
    types += [TASKS[0][0]] * (n - len(types))
    rng.shuffle(types)
    items, kinds = [], []
    for reward_type in types:
        answer, gold = ANSWERS[reward_type](rng, right=rng.random() < 0.5)
        kind = ""
        if rng.random() < 0.05:
            kind, response = degenerate(rng, reward_type)
        else:
            response = reasoning(rng) + answer
        items.append(ScoreItem(reward_type, response, gold))
        kinds.append(kind)
    return items, kinds


def slowest(seconds: list[float], items: list[ScoreItem], kinds: list[str]) -> str:
    i = max(range(len(seconds)), key=seconds.__getitem__)
    return f"{seconds[i]:.2f} s ({items[i].reward_type}, {kinds[i] or 'normal'} response)"


def spin(n: int) -> int:
    """A pure-Python CPU loop: the parallel speedup it gets is the ceiling for the pool's."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def cpu_ceiling(workers: int, n: int = 5_000_000) -> float:
    """Speedup of `workers` processes over one on `workers` units of pure CPU work, measured now:
    on a machine shared with other jobs it is well below `workers`."""
    start = time.perf_counter()
    for _ in range(workers):
        spin(n)
    serial = time.perf_counter() - start
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(spin, [1] * workers)  # start-up outside the timing
        start = time.perf_counter()
        pool.map(spin, [n] * workers)
        return serial / (time.perf_counter() - start)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes `pids` so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def score_serially(items: list[ScoreItem]) -> tuple[float, list[float], list[float], float]:
    """(wall seconds, scores, seconds per item, CPU seconds) of scoring `items` one by one here."""
    start = time.perf_counter()
    cpu_start = time.process_time()
    scores, seconds = [], []
    for item in items:
        t = time.perf_counter()
        scores.append(compute_score(item.reward_type, item.response, item.ground_truth))
        seconds.append(time.perf_counter() - t)
    return time.perf_counter() - start, scores, seconds, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--rounds", type=int, default=3, help="serial and pool runs alternate, so load from other jobs hits both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    items, kinds = build_items(args.items, args.seed)
    cfg = RewardConfig(num_workers=args.workers)
    n_degenerate = sum(bool(k) for k in kinds)
    print(f"{len(items)} items: {dict(Counter(i.reward_type for i in items))}")
    print(f"degenerate: {n_degenerate} ({n_degenerate / len(items):.1%}): {dict(Counter(k for k in kinds if k))}")
    print(f"response characters: {sum(len(i.response) for i in items) / 1e6:.1f} M; cores: {os.cpu_count()}; "
          f"load average before: {os.getloadavg()[0]:.2f} (other jobs share these cores)")

    warm_up = {i.reward_type: i for i, k in zip(items, kinds) if not k}  # one normal item per type, untimed:
    for item in warm_up.values():  # lazy imports and parser set-up happen here, as in each worker before it starts
        compute_score(item.reward_type, item.response, item.ground_truth)

    serial_runs, pool_runs, ceilings, pool_cpu = [], [], [], []
    with RewardScorer(cfg) as scorer:
        cold = scorer.score(items)
        print(f"pool cold ({scorer.num_workers} workers, includes start-up): {cold.seconds:6.2f} s  {len(items) / cold.seconds:6.1f} items/s")
        for r in range(args.rounds):
            serial_runs.append(score_serially(items))
            cpu_before = time.process_time(), cpu_seconds(scorer.worker_pids)
            pool_runs.append(scorer.score(items))
            pool_cpu.append((time.process_time() - cpu_before[0], cpu_seconds(scorer.worker_pids) - cpu_before[1]))
            ceilings.append(cpu_ceiling(scorer.num_workers))
            serial_s, pool = serial_runs[-1][0], pool_runs[-1]
            busy = sum(pool.item_seconds) / (scorer.num_workers * pool.seconds)
            print(f"round {r}: serial {serial_s:6.2f} s {len(items) / serial_s:6.1f} items/s | pool {pool.seconds:6.2f} s "
                  f"{len(items) / pool.seconds:6.1f} items/s (workers busy {busy:.0%}) | speedup {serial_s / pool.seconds:.2f}x"
                  f" | pure-CPU {scorer.num_workers}-process ceiling now {ceilings[-1]:.2f}x")

    serial_s, serial_scores, serial_seconds, _ = min(serial_runs, key=lambda run: run[0])
    pool = min(pool_runs, key=lambda run: run.seconds)
    speedups = sorted(s[0] / p.seconds for s, p in zip(serial_runs, pool_runs))
    print(f"best of {args.rounds}: serial {len(items) / serial_s:.1f} items/s, pool {len(items) / pool.seconds:.1f} items/s, "
          f"speedup {serial_s / pool.seconds:.2f}x; median speedup of the rounds {speedups[len(speedups) // 2]:.2f}x "
          f"(median pure-CPU ceiling {sorted(ceilings)[len(ceilings) // 2]:.2f}x)")
    serial_cpu = sorted(run[3] for run in serial_runs)[len(serial_runs) // 2]
    parent_cpu, workers_cpu = sorted(pool_cpu, key=sum)[len(pool_cpu) // 2]
    print(f"CPU seconds per call (median): serial {serial_cpu:.2f}; pool {parent_cpu + workers_cpu:.2f} "
          f"(parent {parent_cpu:.2f} + workers {workers_cpu:.2f}), {(parent_cpu + workers_cpu) / serial_cpu - 1:+.0%}")
    print(f"slowest item: serial {slowest(serial_seconds, items, kinds)}; pool {slowest(pool.item_seconds, items, kinds)}")
    past_limit = sum(s >= cfg.timeout_s for run in pool_runs for s in run.item_seconds)
    print(f"items past timeout_s={cfg.timeout_s:g}: {past_limit}; timeouts by type: {pool.timeouts} "
          f"(math_verify's own limit, {MATH_VERIFY_TIMEOUT_S} s); errors by type: {pool.errors}")
    same = sum(a == b for a, b in zip(serial_scores, pool.scores))
    print(f"pool scores equal to serial scores: {same}/{len(items)}; mean reward {sum(pool.scores) / len(items):.3f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
