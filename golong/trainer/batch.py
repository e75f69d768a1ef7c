"""What the trainer trains on: one response (`TrainSample`) and a packed micro-batch of them.

`pack(samples)` concatenates prompt+response sequences into one row with no padding; position ids
restart at 0 for each sequence and `cu_seqlens` marks the boundaries for varlen attention. Only
response tokens reach the LM head: `logit_positions` are the row positions whose hidden states
predict them (each response token is predicted by the token before it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from golong.trainer.router_replay import check_sample_routes, pack_routes


@dataclass
class TrainSample:
    """One response to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    rollout_logprobs: torch.Tensor | None = None  # (R,) log-probs the rollout engine sampled the response with
    loss_weight: float = 1.0  # scales the response's loss; 0 leaves it out of the loss and its denominator
    routes: torch.Tensor | None = None  # (P+R-1, L, k) rollout's MoE experts per token (router replay, golong/trainer/router_replay.py)

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a TrainSample needs at least one prompt token (the first response token is predicted from it)")
        if self.rollout_logprobs is not None and self.rollout_logprobs.shape != (len(self.response_ids),):
            raise ValueError(f"rollout_logprobs has shape {tuple(self.rollout_logprobs.shape)}, "
                             f"expected ({len(self.response_ids)},): one per response token")
        check_sample_routes(self.routes, self.num_tokens)  # router replay

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def in_loss(self) -> bool:
        """Whether the response counts in the loss and its denominator."""
        return self.loss_weight != 0 and len(self.response_ids) > 0


@dataclass
class PackedMicroBatch:
    """Sequences packed into one row; R = response tokens of all sequences, S = sequences."""

    input_ids: torch.Tensor  # (1, T) prompt + response tokens, sequence after sequence
    position_ids: torch.Tensor  # (1, T) restarting at 0 for each sequence
    cu_seqlens: torch.Tensor  # (S+1,) int32, sequence boundaries in the row
    max_seqlen: int
    logit_positions: torch.Tensor  # (R,) int64, row position whose hidden state predicts each response token
    labels: torch.Tensor  # (R,) int64, the response tokens
    advantages: torch.Tensor  # (R,) fp32, each token's sequence advantage
    loss_mask: torch.Tensor  # (R,) fp32, the sequence's loss_weight (0: out of the loss)
    seq_index: torch.Tensor  # (R,) int64, which sequence of this micro-batch each token belongs to
    rollout_logprobs: torch.Tensor | None  # (R,) fp32, None when a sample has none
    num_real_tokens: int  # tokens of real samples (a filler micro-batch has 0)
    old_logprobs: torch.Tensor | None = None  # (R,) set by the caller from PolicyEngine.old_logprobs
    ref_logprobs: torch.Tensor | None = None  # (R,) set by the caller from PolicyEngine.ref_logprobs (KL only)
    routes: torch.Tensor | None = None  # (T, L, k) MoE experts per row token (router replay), None without

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes for this micro-batch (fillers included)."""
        return self.input_ids.shape[1]

    def to(self, device: torch.device) -> PackedMicroBatch:
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in self.__dict__.items()}
        return PackedMicroBatch(**moved)


# A micro-batch with no samples still runs a forward/backward (weight 0) so that every rank makes the
# same ZeRO-3 collective calls; it is one two-token sequence whose response token has loss weight 0.
_FILLER = TrainSample(prompt_ids=[0], response_ids=[0], advantage=0.0, rollout_logprobs=torch.zeros(1), loss_weight=0.0)


def _per_token(values: list[float], response_lengths: torch.Tensor) -> torch.Tensor:
    """(R,) fp32: each sequence's value repeated over its response tokens."""
    return torch.repeat_interleave(torch.tensor(values, dtype=torch.float32), response_lengths)


def pack(samples: list[TrainSample]) -> PackedMicroBatch:
    """Concatenate `samples` into one packed row (an empty list gives a zero-weight filler)."""
    real = bool(samples)
    samples = samples or [_FILLER]
    lengths = [s.num_tokens for s in samples]
    input_ids = torch.tensor([t for s in samples for t in (*s.prompt_ids, *s.response_ids)], dtype=torch.long)
    position_ids = torch.cat([torch.arange(n) for n in lengths])
    cu_seqlens = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    starts = cu_seqlens[:-1].tolist()
    logit_positions = torch.cat([torch.arange(len(s.response_ids)) + start + len(s.prompt_ids) - 1
                                 for s, start in zip(samples, starts)])
    response_lengths = torch.tensor([len(s.response_ids) for s in samples])
    have_rollout = all(s.rollout_logprobs is not None for s in samples)
    return PackedMicroBatch(
        input_ids=input_ids[None],
        position_ids=position_ids[None],
        cu_seqlens=cu_seqlens,
        max_seqlen=max(lengths),
        logit_positions=logit_positions,
        labels=input_ids[logit_positions + 1],
        advantages=_per_token([s.advantage for s in samples], response_lengths),
        loss_mask=_per_token([s.loss_weight for s in samples], response_lengths),
        seq_index=torch.repeat_interleave(torch.arange(len(samples)), response_lengths),
        rollout_logprobs=torch.cat([s.rollout_logprobs.float() for s in samples]) if have_rollout else None,
        num_real_tokens=sum(lengths) if real else 0,
        routes=pack_routes([s.routes for s in samples], lengths) if real else None,  # router replay
    )
