"""The reward registry: reward type name -> function scoring one extracted answer against its gold.

A reward function is `fn(answer: Answer, gold, rules: ScoringRules) -> float` in [0, 1]. It may raise
on a malformed gold or on pathological text: `compute_score` turns any exception into 0 and the
worker pool counts it, so a reward function does not need to defend itself against every output.
Users add rewards with `@register("name")` in a module of their own; workers of the scoring pool
import the modules listed in `reward.extra_modules` so that the registration happens there too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from golong.rewards.config import RewardConfig
from golong.rewards.extract import Answer

# The nine task rewards of the paper (Table 1), in task order T1..T9.
REWARD_TYPES: tuple[str, ...] = ("em", "accuracy", "f1", "math_verify", "iou", "subem", "ndcg", "pairwise", "rouge_l")


@dataclass(frozen=True)
class ScoringRules:
    """The scoring choices the paper leaves open; `RewardConfig` sets them for a run."""

    require_think_close: bool = RewardConfig.require_think_close
    subem_length_ratio: float = RewardConfig.subem_length_ratio

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> "ScoringRules":
        return cls(require_think_close=cfg.require_think_close, subem_length_ratio=cfg.subem_length_ratio)


class RewardTimeout(Exception):
    """A reward function gave up on an answer that takes too long to check (counted as a timeout)."""


RewardFn = Callable[[Answer, Any, ScoringRules], float]
_REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function under `name`; a name registered twice is an error."""

    def add(fn: RewardFn) -> RewardFn:
        if name in _REWARDS:
            raise ValueError(f"reward type {name!r} is already registered (by {_REWARDS[name].__module__})")
        _REWARDS[name] = fn
        return fn

    return add


def registered_types() -> tuple[str, ...]:
    """Every registered reward type: the nine of Table 1 in task order, then the others."""
    return tuple(r for r in REWARD_TYPES if r in _REWARDS) + tuple(r for r in _REWARDS if r not in REWARD_TYPES)


def validate_reward_type(reward_type: str) -> None:
    """Raise ValueError naming the known reward types when `reward_type` is not one of them."""
    if reward_type not in _REWARDS:
        known = ", ".join(registered_types())
        raise ValueError(f"unknown reward type {reward_type!r}; known reward types: {known}")


def reward_function(reward_type: str) -> RewardFn:
    validate_reward_type(reward_type)
    return _REWARDS[reward_type]
