"""Scoring a rollout batch in worker processes that no model output can crash or stall.

The trainer process holds torch and vLLM threads, so workers are never forked from it: they start
from a forkserver (or spawn). The parent applies only extraction rule 1 (a linear scan for
`</think>`): responses with unfinished reasoning score 0 on the spot, and only the text after the
reasoning block, usually a small part of a long response, crosses to a worker. Each item then has a
wall-clock limit (`timeout_s`) from the moment its worker starts it. An item past its limit scores
0, counts as a timeout, and its worker is killed (SIGKILL: a hang inside C code ignores anything
gentler) and replaced. A worker that dies while scoring (segfault, out of memory) counts an error
for its item and is replaced too. Each worker's address space is capped (`memory_limit_mb`), so a
runaway allocation fails with MemoryError inside the worker instead of exhausting the machine.
Workers persist across `score` calls (one per training step) and block on their pipe while idle; no
state of one call reaches the next (an interrupted call replaces the workers it left busy).

Each worker has a few small items in flight besides the one it scores, waiting in its pipe, so that it
does not idle while the parent (one process among many on a busy machine) hands it the next one.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import resource
import signal
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from golong.rewards.config import RewardConfig
from golong.rewards.registry import RewardTimeout, ScoringRules, validate_reward_type
from golong.rewards.score import compute_score, final_text, score_final_text


@dataclass
class ScoreItem:
    reward_type: str
    response: str
    ground_truth: Any


@dataclass
class ScoreResult:
    scores: list[float]  # (N,) in item order; 0 for timed-out and failed items
    timeouts: dict[str, int]  # reward type -> items that ran out of time
    errors: dict[str, int]  # reward type -> items whose scoring raised or killed its worker
    seconds: float  # wall-clock time of the call
    item_seconds: list[float] = field(default_factory=list)  # (N,) time each item took to score


STARTUP_TIMEOUT_S = 120.0  # a worker that is not ready by then is broken (an extra module that hangs on import)
# Items waiting in a busy worker's pipe: at most this many in flight per worker, and at most this many
# bytes waiting, well inside the socket buffer (208 KiB on Linux), so that sending never blocks the parent
# (which must stay free to enforce deadlines) and a worker starts its next item without waiting for it.
PIPELINE_DEPTH = 4
PREFETCH_BYTES = 64 * 1024

# ----------------------------------------------------------------------------------------------
# The worker process


def _cap_address_space(memory_limit_mb: int) -> None:
    """RLIMIT_AS = the address space the worker holds now + memory_limit_mb. Relative, because a
    worker imports the parent's main module (which may map torch's gigabytes) before it starts."""
    with open("/proc/self/statm") as f:
        held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = held + memory_limit_mb * 2**20
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def worker_main(conn: Connection, rules: ScoringRules, memory_limit_mb: int, extra_modules: tuple[str, ...]) -> None:
    """Say ("ready",) once started, then answer each (reward_type, final_text, ground_truth) message
    with ("scored", score, status, seconds) until None or the parent is gone. Runs in the worker's
    main thread, where math_verify's own alarms work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        for module in extra_modules:
            importlib.import_module(module)
        _cap_address_space(memory_limit_mb)
        # math_verify builds its parsers on first use (~0.3 s, seconds under load): do it before the
        # first item's clock starts
        compute_score("math_verify", "\\boxed{\\frac{1}{2}}", "0.5")
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        start = time.perf_counter()
        status = "ok"
        try:
            score = score_final_text(*message, rules)
        except RewardTimeout:
            score, status = 0.0, "timeout"
        except Exception:  # MemoryError and RecursionError included: the item scores 0, the worker lives on
            score, status = 0.0, "error"
        conn.send(("scored", score, status, time.perf_counter() - start))


class _Worker:
    """A worker process, the parent's end of its pipe, and the items sent to it."""

    def __init__(self, ctx, cfg: RewardConfig, rules: ScoringRules):
        self.conn, child = ctx.Pipe(duplex=True)  # a socket pair
        self.process = ctx.Process(
            target=worker_main,
            args=(child, rules, cfg.memory_limit_mb, tuple(cfg.extra_modules)),
            name="golong-reward-worker",
            daemon=True,
        )
        self.started_at = time.monotonic()
        self.process.start()
        child.close()  # so that the worker's death reads as EOF here
        self.ready = False  # an item's time starts when its worker starts it, never during start-up
        self.queue: deque[tuple[int, int]] = deque()  # (index, bytes) of the items sent; the first is being scored
        self.current_since = 0.0  # when the worker started queue[0]
        self.items_done = 0

    def deadline(self, timeout_s: float) -> float:
        return self.current_since + timeout_s if self.ready else self.started_at + STARTUP_TIMEOUT_S

    def can_take(self, payload: bytes, max_items: int) -> bool:
        """Whether to send `payload` now: any item when idle, a small one behind the current item."""
        if not self.ready or len(self.queue) >= PIPELINE_DEPTH or self.items_done + len(self.queue) >= max_items:
            return False
        waiting = sum(nbytes for _, nbytes in list(self.queue)[1:])
        return not self.queue or waiting + len(payload) <= PREFETCH_BYTES

    def send(self, index: int, payload: bytes) -> None:
        if not self.queue:
            self.current_since = time.monotonic()
        self.queue.append((index, len(payload)))
        self.conn.send_bytes(payload)

    def pop_current(self) -> int:
        """The index of the item being scored, now answered (or given up); the next one starts now."""
        self.current_since = time.monotonic()
        return self.queue.popleft()[0]

    def stop(self, kill: bool) -> None:
        """End the process (kill: at once; else ask, then kill if it lingers) and reap it."""
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


# ----------------------------------------------------------------------------------------------
# The pool


@dataclass
class _Batch:
    """The state of one `score` call."""

    items: list[ScoreItem]
    payloads: dict[int, bytes]  # index -> pickled (reward_type, final text, ground truth) of the items for workers
    todo: deque  # indices of the items still to send to a worker
    scores: list[float]
    item_seconds: list[float]
    timeouts: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    def record(self, index: int, score: float, status: str, seconds: float) -> None:
        self.scores[index], self.item_seconds[index] = score, seconds
        if status == "timeout":
            self.timeouts[self.items[index].reward_type] += 1
        elif status == "error":
            self.errors[self.items[index].reward_type] += 1


def default_num_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)))


class RewardScorer:
    """A pool of scoring workers, started on the first `score` call and reused until `close`."""

    def __init__(self, cfg: RewardConfig):
        cfg.validate()
        self.cfg = cfg
        self.rules = ScoringRules.from_config(cfg)
        self.num_workers = cfg.num_workers or default_num_workers()
        self._ctx = multiprocessing.get_context(cfg.start_method)
        if cfg.start_method == "forkserver":  # the server imports the scorers once; workers fork from it
            self._ctx.set_forkserver_preload(["golong.rewards", "math_verify"])
        self._workers: list[_Worker] = []

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, items: list[ScoreItem]) -> ScoreResult:
        """Scores of `items` in order, with per-reward-type counts of timeouts and errors."""
        for item in items:  # a wrong reward type is the caller's bug: fail before any work
            validate_reward_type(item.reward_type)
        start = time.perf_counter()
        payloads = {}
        for index, item in enumerate(items):
            text = final_text(item.response, self.rules)
            if text is not None:  # unfinished reasoning scores 0 here and now
                payloads[index] = bytes(ForkingPickler.dumps((item.reward_type, text, item.ground_truth)))
        batch = _Batch(items, payloads, deque(payloads), [0.0] * len(items), [0.0] * len(items))
        if batch.todo and not self._workers:
            self._workers = [_Worker(self._ctx, self.cfg, self.rules) for _ in range(self.num_workers)]
        try:
            while batch.todo or any(w.queue for w in self._workers):
                self._dispatch(batch)
                self._collect(batch)
                self._expire(batch)
        finally:  # an interrupted call must not leave half-scored items in the workers for the next one
            for k, w in enumerate(self._workers):
                if w.queue:
                    self._replace(k, kill=True)
        seconds = time.perf_counter() - start
        return ScoreResult(scores=batch.scores, timeouts=dict(batch.timeouts), errors=dict(batch.errors), seconds=seconds,
                           item_seconds=batch.item_seconds)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring their CPU and memory)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker; the scorer can still be used (it starts new ones)."""
        for w in self._workers:
            w.stop(kill=False)
        self._workers = []

    def _dispatch(self, batch: _Batch) -> None:
        """Send the next items level by level, so that work spreads evenly: first one to each idle
        worker, then one more behind each busy worker's items, up to PIPELINE_DEPTH."""
        for depth in range(1, PIPELINE_DEPTH + 1):
            for k, w in enumerate(self._workers):
                if not batch.todo:
                    return
                if len(w.queue) < depth and w.can_take(batch.payloads[batch.todo[0]], self.cfg.worker_max_items):
                    index = batch.todo.popleft()
                    try:
                        w.send(index, batch.payloads[index])
                    except OSError:  # the worker died: not this item's fault, send its items again
                        self._requeue(batch, k)

    def _collect(self, batch: _Batch) -> None:
        """Wait for the first answer (or the first deadline) and take in every answer that came."""
        waiting = {w.conn: k for k, w in enumerate(self._workers) if w.queue or not w.ready}
        first_deadline = min(self._workers[k].deadline(self.cfg.timeout_s) for k in waiting.values())
        for conn in wait(list(waiting), timeout=max(0.0, first_deadline - time.monotonic())):
            k = waiting[conn]
            w = self._workers[k]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if not w.ready:
                    raise RuntimeError(f"a scoring worker died while starting (exit {w.process.exitcode})") from None
                elapsed = time.monotonic() - w.current_since
                batch.record(w.pop_current(), 0.0, "error", elapsed)  # it died scoring this item
                self._requeue(batch, k)
                continue
            if message[0] == "ready":
                w.ready = True
            elif message[0] == "failed":
                raise RuntimeError(f"a scoring worker failed to start:\n{message[1]}")
            else:
                batch.record(w.pop_current(), *message[1:])
                w.items_done += 1
                if w.items_done >= self.cfg.worker_max_items:
                    self._replace(k, kill=False)

    def _expire(self, batch: _Batch) -> None:
        """Kill and replace the workers whose current item ran past its time limit."""
        now = time.monotonic()
        for k, w in enumerate(self._workers):
            elapsed = now - w.current_since
            if w.queue and elapsed >= self.cfg.timeout_s:
                batch.record(w.pop_current(), 0.0, "timeout", elapsed)
                self._requeue(batch, k)
            elif not w.ready and now >= w.deadline(self.cfg.timeout_s):
                raise RuntimeError(f"a scoring worker did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def _requeue(self, batch: _Batch, k: int) -> None:
        """Replace worker k, putting the items it had not started back at the front of the batch."""
        batch.todo.extendleft(reversed([index for index, _ in self._workers[k].queue]))
        self._replace(k, kill=True)

    def _replace(self, k: int, kill: bool) -> None:
        self._workers[k].stop(kill=kill)
        self._workers[k] = _Worker(self._ctx, self.cfg, self.rules)


def score_batch(items: list[ScoreItem], cfg: RewardConfig | None = None) -> ScoreResult:
    """Score `items` once in a fresh pool (the trainer keeps a `RewardScorer` instead)."""
    with RewardScorer(cfg or RewardConfig()) as scorer:
        return scorer.score(items)
