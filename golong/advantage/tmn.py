"""TMN-Reweight (paper section 4.3): task-level mean normalisation, then difficulty-adaptive reweighting.

Step 1 (TMN) divides every response's centered reward by one per-task scale, the root mean
square of the task's per-prompt standard deviations (Eq. 5; appendix A derives it as the scale of
the per-task gradient norm). Step 2 estimates each prompt's difficulty with a pass rate against a
threshold smoothed toward the task's mean (Eq. 6) and scales positive and negative advantages
asymmetrically by w and 1/w (Eq. 7, 8).
"""
from __future__ import annotations

import torch

from golong.advantage.base import AdvantageEstimator, as_number, check_delta
from golong.advantage.batch import GroupedRewards
from golong.advantage.registry import register

# A reward counts as above the threshold of Eq. 6 only if it exceeds it by more than this fraction
# of the task's largest |reward|, so that rounding does not decide ties. The float mean of
# [0.6, 0.8, 1.0] is 0.7999999999999999, and in float32 rewards [1/3, 2/3, 1] have mean
# 0.66666668 < float32(2/3); either way the middle reward, equal to its group mean, would count as
# strictly above it and move p_hat from 1/3 to 2/3. 1e-6 is above float32 rounding (6e-8) and far
# below any reward difference that means something.
TIE_TOLERANCE = 1e-6


@register("tmn_reweight")
class TMNReweight(AdvantageEstimator):
    """TMN-Reweight, paper Eq. 5-8 (with reweight=False: plain TMN, Eq. 5 only).

        A_hat_i    = (r_i - mu_u) / (sigma_task + delta),  sigma_task = sqrt(mean_{u in task} sigma_u^2)  (Eq. 5)
        mu_tilde_u = alpha * mu_u + (1 - alpha) * mu_task,  mu_task = mean_{u in task} mu_u             (Eq. 6)
        p_hat_u    = #{i in u : r_i > mu_tilde_u} / G_u                                                (Eq. 6)
        w_u        = exp(0.5 - p_hat_u)                                                                (Eq. 7)
        A_i        = A_hat_i * w_u if A_hat_i > 0 else A_hat_i / w_u                                   (Eq. 8)

    Means over a task's prompts count each prompt of the batch once, whatever its group size, and
    skip singleton groups (no sigma_u). The sign test of Eq. 8 uses the group mean mu_u (through
    A_hat), not the smoothed mu_tilde_u, as the paper specifies. "Strictly greater" in p_hat means
    by more than TIE_TOLERANCE x the task's largest |reward|, so rounding never breaks a tie.
    alpha = 0.8 is Table 6's best.
    Logged: pass_rate_mean (mean p_hat over prompts with a baseline), w_min, w_max.

    Compared with the released GoLongRL code (verl core_algos.compute_tmn_grpo_outcome_advantage):
    same formulas (its difficulty_gamma = 1 is Eq. 7); there a singleton group is centered on 0
    (A = r / sigma_task) and enters sigma_task with variance 1 and mu_task with mean 0, here it gets
    0 and is left out; its default alpha is 0.5, the paper's (and ours) 0.8.
    """

    def __init__(self, alpha: float = 0.8, reweight: bool = True, delta: float = 1e-6):
        self.alpha = as_number("alpha", alpha)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (Eq. 6; Table 6 uses 0.8), got {alpha!r}")
        if not isinstance(reweight, bool):
            raise ValueError(f"reweight must be true or false, got {reweight!r}")
        self.reweight = reweight
        self.delta = check_delta(delta)

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        # Eq. 5: root mean square of the task's per-prompt sigma_u. A task whose groups all have zero
        # variance has sigma_task = 0 and all-zero numerators: 0 / (0 + delta) = 0.
        sigma_task = batch.mean_over_prompts_per_task(batch.group_std.square()).sqrt()  # (n_tasks,)
        a_hat = batch.centered / (sigma_task[batch.task] + self.delta)  # (N,)
        if not self.reweight:
            return a_hat

        # Eq. 6: pass rate against the prompt mean smoothed toward the task mean.
        mu_task = batch.mean_over_prompts_per_task(batch.group_mean)  # (n_tasks,)
        mu_tilde = self.alpha * batch.group_mean + (1.0 - self.alpha) * mu_task[batch.group_task]  # (n_groups,)
        scale = torch.zeros(batch.n_tasks, dtype=torch.float64, device=a_hat.device)
        scale = scale.scatter_reduce(0, batch.task, batch.rewards.abs(), reduce="amax")  # (n_tasks,)
        margin = TIE_TOLERANCE * scale[batch.task]  # (N,)
        passed = (batch.rewards - mu_tilde[batch.group] > margin).to(torch.float64)  # (N,)
        p_hat = batch.sum_per_group(passed) / batch.group_size  # (n_groups,)
        w = torch.exp(0.5 - p_hat)  # Eq. 7, (n_groups,)

        # Eq. 8: four quadrants. Hard prompts (w > 1) amplify positives and damp negatives; easy
        # prompts (w < 1) damp positives and amplify negatives.
        w_row = w[batch.group]
        advantages = torch.where(a_hat > 0, a_hat * w_row, a_hat / w_row)

        counted = batch.has_baseline
        if counted.any():
            self.log("pass_rate_mean", p_hat[counted].mean())
            self.log("w_min", w[counted].min())
            self.log("w_max", w[counted].max())
        return advantages
