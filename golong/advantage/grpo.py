"""Group-baseline estimators: GRPO (Eq. 1), Dr.GRPO (Eq. 3) and QwenLong-L1.5's per-task std.

All three subtract the prompt's group mean mu_u; they differ only in what they divide by.
"""
from __future__ import annotations

import torch

from golong.advantage.base import AdvantageEstimator, check_delta
from golong.advantage.batch import GroupedRewards
from golong.advantage.registry import register


@register("grpo")
class GRPO(AdvantageEstimator):
    """GRPO (Shao et al., 2024), paper Eq. 1:

        A_i = (r_i - mu_u) / (sigma_u + delta),  sigma_u = sqrt(sum_j (r_j - mu_u)^2 / (G - 1))
    """

    def __init__(self, delta: float = 1e-6):
        self.delta = check_delta(delta)

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        return batch.centered / (batch.group_std[batch.group] + self.delta)  # Eq. 1


@register("dr_grpo")
class DrGRPO(AdvantageEstimator):
    """Dr.GRPO (Liu et al., 2025), paper Eq. 3: A_i = r_i - mu_u.

    Dr.GRPO also replaces the per-response length normalisation by a constant L (Eq. 3), so it asks
    the loss for "constant-norm" aggregation; `algorithm.loss.agg_mode` other than auto overrides it.
    """

    preferred_loss_agg = "constant-norm"

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        return batch.centered  # Eq. 3


@register("task_std")
class TaskStd(AdvantageEstimator):
    """QwenLong-L1.5's task-specific advantage (Shen et al., 2025, arXiv:2512.12967; section 4.4's comparison):

        A_i = (r_i - mu_u) / (std_task + delta),
        std_task = sample std (n - 1) of the rewards of ALL the task's responses in the batch, pooled over prompts

    Source: the formula and reference code under "Task-specific Advantage Estimation" in
    github.com/Tongyi-Zhiwen/Qwen-Doc, QwenLong-L1.5/README.md: the group mean stays the baseline
    (numerator), only sigma_u becomes the task's pooled std (torch.std, n - 1) over the batch.
    This pooled std mixes within-prompt spread with between-prompt differences of mean reward
    (difficulty); TMN's sigma_task (Eq. 5) keeps only the former (paper appendix A.3).
    Differences from that code, for the shared conventions: responses of singleton groups get 0
    and are left out of std_task (theirs centers a singleton on 0, i.e. A = r / std_task, and pools it).
    GoLongRL's released verl code (compute_qwenlong_task_advantage) subtracts the task mean instead
    of mu_u; this follows QwenLong-L1.5's own formula and code.
    """

    def __init__(self, delta: float = 1e-6):
        self.delta = check_delta(delta)

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        pooled = batch.row_has_baseline.to(torch.float64)  # (N,) 1 for responses that enter std_task
        count = batch.sum_per_task(pooled)  # (n_tasks,)
        task_mean = batch.sum_per_task(batch.rewards * pooled) / count.clamp(min=1)
        deviation = (batch.rewards - task_mean[batch.task]) * pooled
        task_std = (batch.sum_per_task(deviation * deviation) / (count - 1).clamp(min=1)).sqrt()
        return batch.centered / (task_std[batch.task] + self.delta)
