"""The base class every advantage estimator subclasses, and the diagnostics each call leaves behind.

    estimator = golong.advantage.build("tmn_reweight", alpha=0.8)
    advantages = estimator(rewards, group_ids, task_ids)     # (N,) float32
    metrics = estimator.last_stats.as_metrics({0: "em", 1: "f1"})

A subclass implements `compute(batch: GroupedRewards) -> (N,) float64 tensor`; the base class
checks the inputs, computes the group statistics once, checks the output, and fills `last_stats`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from golong.advantage.batch import GroupedRewards


@dataclass(frozen=True)
class AdvantageStats:
    """Diagnostics of one estimator call; the trainer logs `as_metrics()` as `advantage/...`.

    task_abs_mean: task id -> mean |advantage| over the task's responses in groups of two or more
        (singleton groups have no baseline and are left out, like every per-task statistic).
        This is the per-task measure of the paper's Figure 5, before its division by the
        cross-task mean.
    abs_mean_cv: coefficient of variation of `task_abs_mean` across the tasks in the batch,
        population std / mean (Figure 5: Dr.GRPO 0.54, GRPO 0.34, TMN 0.18 in the paper's run).
        Population std (divide by the number of tasks, numpy's default) because the tasks compared
        are all the tasks there are, not a sample from a larger set of tasks; Figure 5 describes the
        spread of its nine tasks. 0.0 when every advantage is 0 (no spread to measure).
    extra: estimator-specific scalars recorded with `AdvantageEstimator.log` (tmn_reweight:
        pass_rate_mean, w_min, w_max).
    """

    task_abs_mean: dict[int, float]
    abs_mean_cv: float
    extra: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, batch: GroupedRewards, advantages: torch.Tensor, extra: dict[str, float]) -> AdvantageStats:
        counted = batch.row_has_baseline.to(torch.float64)  # (N,)
        count = batch.sum_per_task(counted)  # (n_tasks,)
        abs_sum = batch.sum_per_task(advantages.abs() * counted)  # (n_tasks,)
        present = count > 0
        task_mean = abs_sum[present] / count[present]  # (n_present,)
        spread = task_mean.std(correction=0) if task_mean.numel() else task_mean.new_zeros(())
        center = task_mean.mean() if task_mean.numel() else task_mean.new_zeros(())
        cv = (spread / center).item() if center > 0 else 0.0
        ids = batch.task_ids[present].tolist()
        return cls(task_abs_mean=dict(zip(ids, task_mean.tolist())), abs_mean_cv=cv, extra=dict(extra))

    def as_metrics(self, task_names: dict[int, str] | None = None) -> dict[str, float]:
        """Flat `advantage/...` metrics; tasks are named by `task_names` (else by their id)."""
        names = task_names or {}
        metrics = {f"advantage/abs_mean/{names.get(t, str(t))}": v for t, v in self.task_abs_mean.items()}
        metrics["advantage/abs_mean_cv"] = self.abs_mean_cv
        metrics.update({f"advantage/{k}": v for k, v in self.extra.items()})
        return metrics


def as_number(name: str, value) -> float:
    """An estimator parameter as a float; also takes strings such as "1e-6", which is how YAML reads them."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_delta(delta) -> float:
    """The stability constant added outside the square root; it must keep 0 / (0 + delta) finite."""
    delta = as_number("delta", delta)
    if not delta > 0 or delta == float("inf"):
        raise ValueError(f"delta must be a positive number (default 1e-6), got {delta!r}")
    return delta


class AdvantageEstimator:
    """Base class of advantage estimators: subclass it and implement `compute`.

    `estimator(rewards, group_ids, task_ids)` takes 1-D tensors (or lists) with one entry per
    response in any row order: float rewards, int64 ids saying which responses share a prompt and
    which task each prompt belongs to. It returns float32 advantages of the same length, computed
    in float64, and leaves `last_stats` (an `AdvantageStats`) for the trainer to log.

    Constructor keyword arguments are the estimator's parameters; YAML passes them from
    `algorithm.advantage.params`.
    """

    # The loss aggregation this estimator is designed for; the loss config's `agg_mode: auto`
    # follows it ("constant-norm" for dr_grpo, Eq. 3). None: the trainer's default (token-mean, DAPO's whole-step token mean).
    preferred_loss_agg: ClassVar[str | None] = None
    # True: the advantage compares a response with the other responses to its prompt (a group
    # baseline), so rollout.n = 1 makes every advantage 0; config validation then asks for
    # rollout.n >= 2. An estimator that needs no group (e.g. a learned or fixed baseline) sets False.
    needs_groups: ClassVar[bool] = True
    last_stats: AdvantageStats | None = None

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        """(N,) float64 advantages, one per row of `batch`. Subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute(batch)")

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Record a diagnostic of the current call: `last_stats.extra[name]`, logged as `advantage/<name>`."""
        self.__dict__.setdefault("_logged", {})[name] = float(value)  # also when compute is called directly

    @torch.no_grad()
    def __call__(self, rewards, group_ids, task_ids) -> torch.Tensor:
        batch = GroupedRewards.build(rewards, group_ids, task_ids)
        self._logged = {}
        advantages = self.compute(batch)
        name = type(self).__name__
        if not isinstance(advantages, torch.Tensor) or advantages.shape != batch.rewards.shape:
            got = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
            raise RuntimeError(f"{name}.compute must return a tensor of shape {tuple(batch.rewards.shape)}, got {got}")
        advantages = advantages.to(torch.float64)
        bad = (~torch.isfinite(advantages)).nonzero().flatten()
        if bad.numel():
            raise RuntimeError(f"{name}.compute returned non-finite advantages at rows {bad[:10].tolist()}")
        self.last_stats = AdvantageStats.of(batch, advantages, self._logged)
        return advantages.to(torch.float32)
