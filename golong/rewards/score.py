"""Scoring one response: extraction rules, the registered reward function, and the [0, 1] guard."""
from __future__ import annotations

import logging

from golong.rewards.config import RewardConfig
from golong.rewards.extract import Answer, answer_area, reasoning_removed
from golong.rewards.registry import ScoringRules, reward_function

log = logging.getLogger(__name__)


def as_text(response) -> str:
    """Whatever a caller passes as a response, as text (bytes are decoded, invalid UTF-8 replaced)."""
    if isinstance(response, str):
        return response
    if isinstance(response, (bytes, bytearray)):
        return bytes(response).decode("utf-8", errors="replace")
    return "" if response is None else str(response)


def final_text(response, rules: ScoringRules) -> str | None:
    """Rule 1 on whatever a caller passes as a response: the text after the reasoning block, or None
    when the reasoning never finished (the response scores 0 whatever the task). Linear time."""
    return reasoning_removed(as_text(response), rules.require_think_close)


def score_final_text(reward_type: str, text: str, ground_truth, rules: ScoringRules) -> float:
    """The score of `text`, a response after its reasoning block; raises what the reward function
    raises (the pool counts it) and ValueError for an unknown reward type or a score outside [0, 1]."""
    fn = reward_function(reward_type)
    score = float(fn(Answer(text=text, area=answer_area(text)), ground_truth, rules))
    if not 0.0 <= score <= 1.0:  # also catches NaN
        raise ValueError(f"reward {reward_type!r} returned {score}, outside [0, 1]")
    return score


def score_or_raise(reward_type: str, response, ground_truth, rules: ScoringRules) -> float:
    """The score of one response; raises as `score_final_text` does."""
    text = final_text(response, rules)
    return 0.0 if text is None else score_final_text(reward_type, text, ground_truth, rules)


def compute_score(
    reward_type: str,
    response,
    ground_truth,
    *,
    require_think_close: bool = RewardConfig.require_think_close,
    subem_length_ratio: float = RewardConfig.subem_length_ratio,
) -> float:
    """The reward in [0, 1] of `response` for a row with `ground_truth` under `reward_type`.

    Never raises on any response text: an error while scoring scores 0 (and is logged at debug
    level). An unknown `reward_type` raises ValueError listing the known ones. In-process calls are
    bounded in time by input-size-linear rules plus math_verify's own alarms (main thread only); use
    `RewardScorer` / `score_batch` for a hard per-item wall-clock limit.
    """
    reward_function(reward_type)  # an unknown reward type is the caller's error, not the response's
    rules = ScoringRules(require_think_close=require_think_close, subem_length_ratio=subem_length_ratio)
    try:
        return score_or_raise(reward_type, response, ground_truth, rules)
    except Exception as e:
        log.debug("reward %s failed: %r", reward_type, e)
        return 0.0

