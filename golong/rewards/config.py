"""Config of the reward scorer: the worker pool and the limits every scored response runs under."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from golong.configlib import invalid, option


@dataclass
class RewardConfig:
    num_workers: int = option(0, "Scoring worker processes; 0 means one per CPU core (at most 8).")
    timeout_s: float = option(5.0, "Wall-clock limit per scored response; past it the response scores 0 and is counted.")
    memory_limit_mb: int = option(2048, "Address space (RLIMIT_AS) a scoring worker may add to what it holds at start, so no output can exhaust memory.")
    require_think_close: bool = option(False, "Score 0 when a response has no closing </think> (for thinking models whose template opens <think>).")
    pass_threshold: float = option(0.5, "A response counts as passing when its reward is at least this (pass-rate metrics, calibration).")
    subem_length_ratio: float = option(1.0, "SubEM anti-enumeration: credit scales by min(1, ratio * gold words / answer words); 1.0 makes listing candidates no better than guessing.")
    start_method: Literal["forkserver", "spawn"] = option("forkserver", "How scoring workers start (never fork: the trainer holds torch/vLLM threads); forkserver replaces a killed worker fastest.")
    worker_max_items: int = option(5000, "A scoring worker is replaced after this many items, so nothing a long run scores accumulates in it.")
    extra_modules: list[str] = option([], "Modules every scoring worker imports at start, e.g. ones that @register your own reward types.")

    def validate(self) -> None:
        if self.timeout_s <= 0:
            raise invalid("timeout_s", f"must be positive, got {self.timeout_s}", "use a few seconds, e.g. 5.0")
        if self.num_workers < 0:
            raise invalid("num_workers", f"must be >= 0, got {self.num_workers}", "use 0 for one per core")
        if self.memory_limit_mb < 256:
            raise invalid("memory_limit_mb", f"must be at least 256, got {self.memory_limit_mb}", "use e.g. 2048")
        if self.subem_length_ratio < 1.0:
            raise invalid("subem_length_ratio", f"must be >= 1, got {self.subem_length_ratio}",
                          "use 1.0 (listing candidates earns no more than guessing) or a little more for leniency")
        if self.worker_max_items < 1:
            raise invalid("worker_max_items", f"must be >= 1, got {self.worker_max_items}", "use e.g. 5000")
        if not 0.0 < self.pass_threshold <= 1.0:
            raise invalid("pass_threshold", f"must be in (0, 1], got {self.pass_threshold}", "use e.g. 0.5 or 1.0")
