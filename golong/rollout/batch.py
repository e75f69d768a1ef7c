"""What one round of generation hands the trainer: token ids, log-probs, truncation flags, statistics."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class RolloutBatch:
    """The responses of one `RolloutEngine.generate` call, R = (kept prompts) * n of them.

    The n responses of a prompt are contiguous and in sampling order, so responses
    [k * n, (k + 1) * n) belong to prompt `prompt_index[k * n]`.
    """

    prompt_index: list[int]  # (R,) index into the prompts passed to generate
    response_ids: list[list[int]]  # (R, L_r) sampled token ids; a final EOS stays in
    logprobs: list[list[float]]  # (R, L_r) each sampled token's log-prob under softmax(logits / T), top-p renormalised
    truncated: list[bool]  # (R,) stopped by max_tokens, not by EOS
    num_filtered: int  # prompts left out because prompt + max_tokens > max_model_len
    seconds: float  # wall time of the engine call
    routes: list[np.ndarray] | None = None  # (R,) each (P+R_r-1, L, k) MoE experts per token (router replay), or None


def logprob_abs_diff(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor) -> float:
    """Metric `rollout/logprob_abs_diff`: mean over response tokens of |trainer - rollout| log-prob.

    Both are (T,) over the same response tokens in the same order (e.g. the trainer's old
    log-probs and the batch's `logprobs`, concatenated). They should differ only by numerics
    (bf16 kernels, a few 1e-3 on the tiny model); a jump is the first sign of a broken weight sync.
    """
    if trainer_logprobs.shape != rollout_logprobs.shape or trainer_logprobs.dim() != 1:
        raise ValueError(f"expected two (T,) tensors of equal length, got {tuple(trainer_logprobs.shape)} "
                         f"and {tuple(rollout_logprobs.shape)}")
    if trainer_logprobs.numel() == 0:
        return 0.0
    diff = trainer_logprobs.double() - rollout_logprobs.double().to(trainer_logprobs.device)
    return diff.abs().mean().item()
