"""One step's rewards grouped by prompt and task, with the per-prompt statistics of Eq. 1.

Every group-relative estimator starts from the same numbers: which responses share a prompt
(a group u), which task each prompt belongs to, the group mean mu_u and the group's sample
standard deviation sigma_u. `GroupedRewards.build` checks the caller's tensors once and computes
them with scatter/index ops (no Python loop over responses), in float64.

Conventions (fixed so runs compare with the paper's implementation):
- sigma_u uses G-1 in the denominator (Eq. 1).
- A group of one response has no baseline: it is centered to 0 and left out of every per-task
  statistic (`has_baseline` is False).
- A group whose rewards are all equal has mu_u equal to that reward exactly (not a rounded
  sum / G), so its centered rewards are exactly 0 and sigma_u is exactly 0.
- Ids may be any int64 values in any order (not contiguous, not 0-based, negative); they are
  renumbered 0..n-1 in sorted order of the original ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _scatter_sum(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """out[k] = sum of values[i] over i with index[i] == k."""
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _as_1d(name: str, value, device: torch.device | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(value, device=device)
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one entry per response), got shape {tuple(tensor.shape)}")
    return tensor


def _as_ids(name: str, value, device: torch.device) -> torch.Tensor:
    ids = _as_1d(name, value, device)
    if ids.numel() and (ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex()):
        raise TypeError(f"{name} must hold integers (int64), got dtype {ids.dtype}")
    return ids.to(torch.int64)


@dataclass(frozen=True)
class GroupedRewards:
    """Rewards of one batch with their prompt groups, tasks and per-group statistics (Eq. 1).

    Rows are responses in the caller's order; groups and tasks are renumbered 0..n-1.
    """

    rewards: torch.Tensor  # (N,) float64
    group: torch.Tensor  # (N,) int64, group (prompt) index of each response, in [0, n_groups)
    task: torch.Tensor  # (N,) int64, task index of each response, in [0, n_tasks)
    task_ids: torch.Tensor  # (n_tasks,) int64, the caller's id of each task index
    group_ids: torch.Tensor  # (n_groups,) int64, the caller's id of each group index
    group_task: torch.Tensor  # (n_groups,) int64, task index of each group
    group_size: torch.Tensor  # (n_groups,) float64, G_u
    group_mean: torch.Tensor  # (n_groups,) float64, mu_u (Eq. 1)
    group_std: torch.Tensor  # (n_groups,) float64, sigma_u with G-1 (Eq. 1); 0 for singletons
    centered: torch.Tensor  # (N,) float64, r_i - mu_u; exactly 0 in singleton and zero-variance groups
    has_baseline: torch.Tensor  # (n_groups,) bool, G_u >= 2: the group enters the per-task statistics

    @property
    def n_groups(self) -> int:
        return self.group_mean.shape[0]

    @property
    def n_tasks(self) -> int:
        return self.task_ids.shape[0]

    @property
    def row_has_baseline(self) -> torch.Tensor:  # (N,) bool
        return self.has_baseline[self.group]

    def sum_per_group(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) per-response values -> (n_groups,) sums."""
        return _scatter_sum(self.group, values, self.n_groups)

    def sum_per_task(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) per-response values -> (n_tasks,) sums."""
        return _scatter_sum(self.task, values, self.n_tasks)

    def mean_over_prompts_per_task(self, group_values: torch.Tensor) -> torch.Tensor:
        """(n_groups,) per-prompt values -> (n_tasks,) mean over each task's prompts with a baseline.

        Each prompt counts once whatever its group size (Eq. 5, Eq. 6); a task without any
        group of two or more responses gets 0.
        """
        weight = self.has_baseline.to(group_values.dtype)
        count = _scatter_sum(self.group_task, weight, self.n_tasks)
        total = _scatter_sum(self.group_task, group_values * weight, self.n_tasks)
        return total / count.clamp(min=1)

    @classmethod
    def build(cls, rewards, group_ids, task_ids) -> GroupedRewards:
        """Check the caller's 1-D rewards / group ids / task ids and compute the group statistics.

        Tensors, numpy arrays or Python lists; everything is computed on the rewards' device.
        """
        if not isinstance(rewards, torch.Tensor):  # Python floats are doubles: keep all their digits
            rewards = torch.as_tensor(rewards, dtype=torch.float64)
        rewards = _as_1d("rewards", rewards)
        if rewards.dtype == torch.bool or rewards.is_complex():
            raise TypeError(f"rewards must be real numbers, got dtype {rewards.dtype}")
        rewards = rewards.to(torch.float64)
        groups = _as_ids("group_ids", group_ids, rewards.device)
        tasks = _as_ids("task_ids", task_ids, rewards.device)
        n = rewards.shape[0]
        if groups.shape[0] != n or tasks.shape[0] != n:
            raise ValueError(f"rewards, group_ids and task_ids need one entry per response; got lengths "
                             f"{n}, {groups.shape[0]} and {tasks.shape[0]}")
        if n == 0:
            raise ValueError("the batch is empty: there are no responses to compute advantages for")
        bad = (~torch.isfinite(rewards)).nonzero().flatten()
        if bad.numel():
            shown = ", ".join(f"row {i} (group {groups[i].item()}, task {tasks[i].item()}): {rewards[i].item()}"
                              for i in bad[:10].tolist())
            more = f" and {bad.numel() - 10} more" if bad.numel() > 10 else ""
            raise ValueError(f"rewards must be finite; {bad.numel()} are not: {shown}{more}")

        group_id_of, group = torch.unique(groups, return_inverse=True)
        task_id_of, task = torch.unique(tasks, return_inverse=True)
        n_groups = group_id_of.shape[0]

        # The responses of one prompt share its task: a group spanning two tasks is a caller bug.
        group_task = torch.empty(n_groups, dtype=torch.int64, device=rewards.device).scatter_(0, group, task)
        split = (task != group_task[group]).nonzero().flatten()
        if split.numel():
            bad_groups = torch.unique(group[split])[:5]
            shown = "; ".join(f"group {group_id_of[g].item()} has tasks "
                              f"{torch.unique(tasks[group == g]).tolist()}" for g in bad_groups.tolist())
            raise ValueError(f"every response of a prompt must have the same task id: {shown}")

        size = _scatter_sum(group, torch.ones_like(rewards), n_groups)
        low = torch.full((n_groups,), torch.inf, dtype=torch.float64, device=rewards.device)
        low = low.scatter_reduce(0, group, rewards, reduce="amin")
        high = torch.full_like(low, -torch.inf).scatter_reduce(0, group, rewards, reduce="amax")
        # Eq. 1: mu_u. A constant group takes its value exactly, so it centers to exactly 0.
        mean = torch.where(low == high, low, _scatter_sum(group, rewards, n_groups) / size)
        centered = rewards - mean[group]
        # Eq. 1: sigma_u with G-1 (two-pass: sum of squared deviations, not E[r^2] - mu^2).
        var = _scatter_sum(group, centered * centered, n_groups) / (size - 1).clamp(min=1)
        return cls(rewards=rewards, group=group, task=task, task_ids=task_id_of, group_ids=group_id_of,
                   group_task=group_task, group_size=size, group_mean=mean, group_std=var.sqrt(),
                   centered=centered, has_baseline=size >= 2)
