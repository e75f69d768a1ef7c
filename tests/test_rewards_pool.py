"""The scoring pool: same scores as in-process, survives hanging, crashing and memory-hungry items,
reusable across calls with nothing carried from one call to the next.

The misbehaving rewards are registered here through the real registry; the workers import this
module (`extra_modules`) so that they exist there too.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from golong.rewards import RewardConfig, RewardScorer, ScoreItem, compute_score, register, score_batch


@register("test_hang")
def hang(answer, gold, rules) -> float:
    """Never returns (a model output that sends a checker into an endless loop)."""
    while True:
        time.sleep(0.01)


@register("test_crash")
def crash(answer, gold, rules) -> float:
    """Kills its own process, as a segfault in a C extension would."""
    os.kill(os.getpid(), signal.SIGSEGV)
    return 0.0


@register("test_memory")
def hog_memory(answer, gold, rules) -> float:
    """Allocates 1 GiB, past the worker's 256 MiB allowance."""
    return float(len(bytearray(2**30)) > 0)


@register("test_pid")
def worker_pid(answer, gold, rules) -> float:
    """1 if running in the process whose pid is the gold: tells which process scored an item."""
    return float(os.getpid() == gold)


GOOD = [
    ScoreItem("em", "<think>x</think>[Answer] Paris", "Paris"),
    ScoreItem("accuracy", "[Answer]\n(C) Rome", "C"),
    ScoreItem("f1", "[Answer]\nPart 1\nPart 9", ["Part 1", "Part 2"]),
    ScoreItem("math_verify", "so \\boxed{\\frac{3}{6}}", "0.5"),
    ScoreItem("iou", '<answer>{"columns": ["a"], "data": [[1], [2]]}</answer>', '{"columns": ["a"], "data": [["1"]]}'),
    ScoreItem("subem", "[Answer]\nsupport\noppose", ["support"]),
    ScoreItem("ndcg", "[Answer]\nB\nA", ["A", "B"]),
    ScoreItem("pairwise", "[Answer]\nA\nC\nB", ["A", "B", "C"]),
    ScoreItem("rouge_l", "[答案]\n猫坐在垫子上", "猫在垫子上坐"),
    ScoreItem("em", "x" * 2_000_000, "Paris"),  # a 2 MB response crosses the pipe
]


def alive(pid: int) -> bool:
    """A running (not dead, not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def serial_scores(items):
    return [compute_score(i.reward_type, i.response, i.ground_truth) for i in items]


@pytest.fixture(scope="module")
def scorer():
    cfg = RewardConfig(num_workers=2, timeout_s=1.5, memory_limit_mb=256, extra_modules=[__name__])
    with RewardScorer(cfg) as s:
        yield s
    assert not [p for p in multiprocessing.active_children() if p.name == "golong-reward-worker"]


def test_pool_scores_equal_in_process_scores(scorer):
    result = scorer.score(GOOD)
    assert result.scores == serial_scores(GOOD)
    assert result.scores[:3] == [1.0, 1.0, 0.5]
    assert result.timeouts == {} and result.errors == {}
    assert len(result.item_seconds) == len(GOOD) and result.seconds > 0


def test_pool_survives_hang_crash_and_memory_hog(scorer):
    bad = [ScoreItem("test_hang", "x", None), ScoreItem("test_crash", "x", None), ScoreItem("test_memory", "x", None)]
    items = GOOD[:3] + bad + GOOD[3:6] + [ScoreItem("test_hang", "y", None)] + GOOD[6:]
    result = scorer.score(items)
    expected = serial_scores(GOOD)
    assert result.scores == expected[:3] + [0.0, 0.0, 0.0] + expected[3:6] + [0.0] + expected[6:]
    assert result.timeouts == {"test_hang": 2}
    assert result.errors == {"test_crash": 1, "test_memory": 1}
    assert 1.5 <= result.item_seconds[3] < 4.0  # killed at its limit, not much later
    # the pool is whole again and the next call is clean
    assert len(scorer.worker_pids) == 2 and all(alive(pid) for pid in scorer.worker_pids)
    again = scorer.score(GOOD)
    assert again.scores == expected and again.timeouts == {} and again.errors == {}


def test_interrupted_call_leaves_nothing_behind(scorer):
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    scorer.score(GOOD[:2])
    before = scorer.worker_pids
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)  # Ctrl-C while the workers are stuck on hanging items
    try:
        with pytest.raises(KeyboardInterrupt):
            scorer.score([ScoreItem("test_hang", "x", None), ScoreItem("test_hang", "y", None)] + GOOD[:2])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert any(not alive(pid) for pid in before)  # the busy workers were killed and reaped; idle ones kept
    assert all(pid in scorer.worker_pids for pid in before if alive(pid))
    assert len(scorer.worker_pids) == 2 and all(alive(pid) for pid in scorer.worker_pids)
    result = scorer.score(GOOD[:2])
    assert result.scores == [1.0, 1.0] and result.timeouts == {} and result.errors == {}


def test_bad_call_fails_before_any_work(scorer):
    with pytest.raises(ValueError, match="unknown reward type 'bleu'"):
        scorer.score([GOOD[0], ScoreItem("bleu", "x", "x")])
    with pytest.raises(Exception, match="pickle"):  # a ground truth that cannot reach a worker
        scorer.score([GOOD[0], ScoreItem("em", "x", lambda: "unpicklable")])


def test_unfinished_reasoning_never_reaches_a_worker():
    scorer = RewardScorer(RewardConfig(require_think_close=True))
    result = scorer.score([ScoreItem("em", "<think>Paris", "Paris"), ScoreItem("em", "[Answer] Paris", "Paris")])
    assert result.scores == [0.0, 0.0] and scorer.worker_pids == []


def test_workers_are_recycled():
    cfg = RewardConfig(num_workers=1, worker_max_items=2, extra_modules=[__name__])
    with RewardScorer(cfg) as s:
        s.score([GOOD[0]])
        pid = s.worker_pids[0]
        result = s.score([ScoreItem("test_pid", "x", pid), ScoreItem("test_pid", "x", pid), GOOD[0]])
        assert result.scores == [1.0, 0.0, 1.0]  # the second item already ran in a fresh worker


def test_score_batch_one_shot():
    result = score_batch(GOOD[:4], RewardConfig(num_workers=1))
    assert result.scores == serial_scores(GOOD[:4])
