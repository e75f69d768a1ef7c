"""Advantage estimators: GRPO, Dr.GRPO, TMN-Reweight, QwenLong-L1.5's task std, and yours.

    from golong.advantage import build
    estimator = build("tmn_reweight", alpha=0.8)
    advantages = estimator(rewards, group_ids, task_ids)   # 1-D, one entry per response, float32
    estimator.last_stats.as_metrics()                      # {"advantage/abs_mean_cv": ..., ...}

Write your own by subclassing `AdvantageEstimator` (see the README's "Write your own advantage estimator") and select it in YAML
with `algorithm.advantage.name: package.module:ClassName`, or `@register("name")` it.
"""
from golong.advantage.base import AdvantageEstimator, AdvantageStats
from golong.advantage.batch import GroupedRewards
from golong.advantage.registry import build, register, registered_names, resolve

# Importing the modules registers their estimators.
from golong.advantage.grpo import GRPO, DrGRPO, TaskStd  # noqa: E402
from golong.advantage.tmn import TMNReweight  # noqa: E402

__all__ = ["AdvantageEstimator", "AdvantageStats", "GroupedRewards", "build", "register", "registered_names", "resolve",
           "GRPO", "DrGRPO", "TaskStd", "TMNReweight"]
