"""Per-step metrics: one JSON line per step in `<output_dir>/metrics.jsonl`, a tqdm progress bar, and wandb
when configured. Only rank 0 writes; the loop hands in numbers already reduced across ranks.

The jsonl file is the run's record (`golong plot` reads it). Each line is flushed as it is written, so a
killed run loses at most the line being written. On resume, lines of steps after the checkpoint are dropped
before logging starts (`start_step`), since those steps run again: the file never holds a step twice.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from golong.trainer.config import LoggingConfig

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # the wandb run id, kept in the run folder so a resumed run continues it


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, skipping a torn last line left by a killed process."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_metrics(path: str, start_step: int) -> int:
    """Keep only the records with step <= start_step (atomically rewritten); return how many were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        total = sum(1 for _ in f)
    kept = [r for r in read_metrics(path) if r.get("step", math.inf) <= start_step]
    if len(kept) < total:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, path)
    return total - len(kept)


def _plain(value: Any) -> Any:
    """A JSON-ready number from a python, numpy or torch scalar."""
    return value.item() if hasattr(value, "item") else value


class MetricsLogger:
    """`log(step, metrics)` once per step on every rank (ranks other than 0 do nothing); `close()` at the end.

    start_step: steps already done (the resumed checkpoint's step; 0 for a fresh run, which therefore
    starts a fresh metrics.jsonl). Steps are counted from 1: the line of step s is logged after step s,
    and the checkpoint `step_s` holds the state after it; step 0 holds only the validation of the initial
    policy (trainer.val_every).
    """

    def __init__(self, output_dir: str, cfg: LoggingConfig, config_dict: dict[str, Any], rank: int, *,
                 start_step: int = 0, total_steps: int | None = None):
        self.cfg = cfg
        self.active = rank == 0
        self.file = self.bar = self.wandb_run = None
        if not self.active:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, METRICS_FILE)
        # a fresh run keeps no line at all (not even an earlier attempt's step-0 validation line)
        dropped = truncate_metrics(path, start_step if start_step else -1)
        if dropped and start_step:
            print(f"metrics: dropped {dropped} lines after step {start_step} from {path} (those steps run again)")
        self.file = open(path, "a", encoding="utf-8")
        if cfg.progress_bar:
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True)
        if cfg.wandb:
            self.wandb_run = self._init_wandb(output_dir, config_dict)

    def _init_wandb(self, output_dir: str, config_dict: dict[str, Any]):
        import wandb

        id_path = os.path.join(output_dir, WANDB_ID_FILE)
        if os.path.exists(id_path):
            with open(id_path) as f:
                run_id = f.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            with open(id_path, "w") as f:
                f.write(run_id)
        return wandb.init(project=self.cfg.wandb_project, name=self.cfg.run_name or os.path.basename(os.path.abspath(output_dir)),
                          id=run_id, resume="allow", dir=output_dir, config=config_dict, mode=self.cfg.wandb_mode)

    def set_total(self, total_steps: int) -> None:
        """The progress bar's total, when it is an estimate refined as the run goes."""
        if self.bar is not None and self.bar.total != total_steps:
            self.bar.total = total_steps
            self.bar.refresh()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        values = {key: _plain(value) for key, value in metrics.items()}
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({key: f"{values[key]:.4g}" for key in self.cfg.progress_keys
                                  if isinstance(values.get(key), (int, float))})
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


class PhaseTimer:
    """Wall-clock seconds per phase of a step:

        with timer.phase("rollout"): ...
        metrics.update(timer.pop())     # {"time/rollout": 12.3, ...}, and the timer starts over

    A phase entered twice in one step adds up. On CUDA, time a phase that ends in a host sync (.item(),
    .cpu(), a collective), otherwise the clock stops before the kernels finish.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"time/{name}": seconds for name, seconds in self.seconds.items()}
        self.seconds = {}
        return out
