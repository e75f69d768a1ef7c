"""Config of the reward scorer: the worker pool and the limits every scored response runs under."""
from __future__ import annotations

from dataclasses import dataclass

from golong.configlib import invalid, option


@dataclass
class RewardConfig:
    num_workers: int = option(0, "Scoring worker processes; 0 means one per CPU core (at most 8).")
    timeout_s: float = option(5.0, "Wall-clock limit per scored response; past it the response scores 0 and is counted.")
    memory_limit_mb: int = option(2048, "Address-space limit of each scoring worker, so no output can exhaust memory.")
    require_think_close: bool = option(False, "Score 0 when a response has no closing </think> (for thinking models whose template opens <think>).")
    pass_threshold: float = option(0.5, "A response counts as passing when its reward is at least this (pass-rate metrics, calibration).")

    def validate(self) -> None:
        if self.timeout_s <= 0:
            raise invalid("timeout_s", f"must be positive, got {self.timeout_s}", "use a few seconds, e.g. 5.0")
        if self.num_workers < 0:
            raise invalid("num_workers", f"must be >= 0, got {self.num_workers}", "use 0 for one per core")
        if not 0.0 < self.pass_threshold <= 1.0:
            raise invalid("pass_threshold", f"must be in (0, 1], got {self.pass_threshold}", "use e.g. 0.5 or 1.0")
