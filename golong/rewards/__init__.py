"""Rewards: the nine task rewards of GoLongRL, answer extraction, task routing, and a parallel scorer.

    compute_score("em", "<think>...</think>[Answer]\\nParis", "Paris")        # -> 1.0
    route_released(record)                                                     # -> ("ndcg", [...])
    with RewardScorer(cfg.reward) as scorer:
        result = scorer.score([ScoreItem("f1", response, ["Part 1", "Part 3"]), ...])

Modules: extract (rules shared by all rewards), registry, match (em, accuracy, f1, subem), math_rewards
(math_verify, retrieval_calculate), table (iou), ranking (ndcg, pairwise), rouge (rouge_l), score
(compute_score), routing (tasks and released records), pool (RewardScorer, score_batch).
"""
from golong.rewards import match, math_rewards, ranking, rouge, table  # noqa: F401  (register the rewards)
from golong.rewards.config import RewardConfig
from golong.rewards.pool import RewardScorer, ScoreItem, ScoreResult, score_batch
from golong.rewards.registry import (
    REWARD_TYPES,
    RewardTimeout,
    ScoringRules,
    register,
    registered_types,
    validate_reward_type,
)
from golong.rewards.routing import RELEASED_ROUTES, REWARD_TO_TASK, TASK_TO_REWARD, route_released
from golong.rewards.score import compute_score

__all__ = [
    "REWARD_TYPES",
    "RELEASED_ROUTES",
    "REWARD_TO_TASK",
    "TASK_TO_REWARD",
    "RewardConfig",
    "RewardScorer",
    "RewardTimeout",
    "ScoreItem",
    "ScoreResult",
    "ScoringRules",
    "compute_score",
    "register",
    "registered_types",
    "route_released",
    "score_batch",
    "validate_reward_type",
]
