"""A researcher's estimator living outside the golong package, selected in YAML by import path:

    algorithm:
      advantage:
        name: tests.custom_estimator:MyEstimator
        params: {clip: 1.0}
"""
import torch

from golong.advantage import AdvantageEstimator, GroupedRewards


class MyEstimator(AdvantageEstimator):
    """GRPO with clipped advantages: A_i = clamp((r_i - mu_u) / (sigma_u + delta), -clip, clip)."""

    def __init__(self, clip: float = 3.0, delta: float = 1e-6):
        self.clip = float(clip)
        self.delta = float(delta)

    def compute(self, batch: GroupedRewards) -> torch.Tensor:
        grpo = batch.centered / (batch.group_std[batch.group] + self.delta)
        self.log("clipped_fraction", (grpo.abs() > self.clip).double().mean())
        return grpo.clamp(-self.clip, self.clip)
