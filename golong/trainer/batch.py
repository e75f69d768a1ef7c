"""What the trainer trains on: one response (`TrainSample`) and a packed micro-batch of them.

A packed micro-batch is one row of *units* back to back, with no padding. A unit is one prompt
followed by some or all of its responses (prompt-once groups, `trainer.share_prompt`):

    row:       [ p p p p | a a a | b b | q q | c c c c ]      two units: [prompt p, a, b] and [prompt q, c]
    positions:   0 1 2 3   4 5 6   4 5   0 1   2 3 4 5       each response continues from its prompt's length
    segments:    0 0 0 0   1 1 1   2 2   3 3   4 4 4 4       the prompt and each response are segments

Attention is exact per response: a prompt token attends causally within its prompt; a token of
response r attends to the whole prompt of its unit and causally to r, never to another response and
never to another unit. So every response sees exactly what it was sampled with (same tokens, same
positions), and the prompt runs once per unit instead of once per response. With share_prompt off
every unit holds one response: the layout is then plain `prompt + response` sequences.

The layout reaches the attention as row coordinates (`golong.trainer.attention.packed_attention_kwargs`):
`cu_seqlens` are the unit boundaries, `cu_segments` the segment boundaries. Only response tokens
reach the LM head: `logit_positions` are the row positions whose hidden states predict them (the
first token of every response of a unit is predicted by the prompt's last token, so that position
repeats once per response; every later token by the response's previous token).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from golong.trainer.router_replay import check_sample_routes, pack_unit_routes


@dataclass
class TrainSample:
    """One response to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    rollout_logprobs: torch.Tensor | None = None  # (R,) log-probs the rollout engine sampled the response with
    loss_weight: float = 1.0  # scales the response's loss; 0 leaves it out of the loss and its denominator
    group_id: int | None = None  # the prompt group: responses with one group_id share prompt_ids (None: alone)
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


def unit_num_tokens(unit: list[TrainSample]) -> int:
    """Tokens of a unit packed prompt-once: the prompt once, then every response."""
    return len(unit[0].prompt_ids) + sum(len(s.response_ids) for s in unit)


@dataclass
class PackedMicroBatch:
    """Units packed into one row (see the module docstring). T = row tokens, U = units,
    S = segments (each unit's prompt and each of its responses), N = responses, R = response tokens."""

    input_ids: torch.Tensor  # (1, T) int64: unit after unit, each [prompt, r_1, ..., r_k]
    position_ids: torch.Tensor  # (1, T) int64: 0.. over the prompt, every response continuing from the prompt length
    cu_seqlens: torch.Tensor  # (U+1,) int32: unit boundaries in the row
    max_seqlen: int  # longest unit
    cu_segments: torch.Tensor  # (S+1,) int32: segment boundaries in the row (a unit starts with its prompt segment)
    max_segment_len: int  # longest segment
    logit_positions: torch.Tensor  # (R,) int64: row position whose hidden state predicts each response token
    labels: torch.Tensor  # (R,) int64: the response tokens
    advantages: torch.Tensor  # (R,) fp32: each token's response advantage
    loss_mask: torch.Tensor  # (R,) fp32: the response's loss_weight (0: out of the loss)
    seq_index: torch.Tensor  # (R,) int64: which response of this micro-batch each token belongs to (0..N-1)
    group_ids: torch.Tensor  # (R,) int64: the token's TrainSample.group_id (-1 where None)
    rollout_logprobs: torch.Tensor | None  # (R,) fp32, None when a sample has none
    num_real_tokens: int  # tokens of real samples (a filler micro-batch has 0)
    num_responses: int  # N (a filler has 0)
    old_logprobs: torch.Tensor | None = None  # (R,) set by the caller from PolicyEngine.old_logprobs (or by forward_backward)
    ref_logprobs: torch.Tensor | None = None  # (R,) set by the caller from PolicyEngine.ref_logprobs (KL only)
    routes: torch.Tensor | None = None  # (T, L, k) MoE experts per row token (router replay), None without
    routes_counted: torch.Tensor | None = None  # (T,) bool: routed by the rollout (False: a response's last token)

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


def _per_token(values: list[float], response_lengths: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """(R,): each response's value repeated over its tokens."""
    return torch.repeat_interleave(torch.tensor(values, dtype=dtype), response_lengths)


def pack(samples: list[TrainSample]) -> PackedMicroBatch:
    """One sequence `prompt + response` per sample (share_prompt off); an empty list gives a zero-weight filler."""
    return pack_units([[s] for s in samples])


def pack_units(units: list[list[TrainSample]]) -> PackedMicroBatch:
    """Pack prompt-once units into one row; every sample of a unit must have the same prompt_ids.
    No units gives a zero-weight filler."""
    real = bool(units)
    units = units or [[_FILLER]]
    for unit in units:
        if not unit or any(s.prompt_ids != unit[0].prompt_ids for s in unit[1:]):
            raise ValueError("a prompt-once unit needs at least one sample, and all of its samples must share prompt_ids")
    ids: list[int] = []
    positions: list[torch.Tensor] = []
    unit_bounds, segment_bounds, logit_positions = [0], [0], []
    for unit in units:
        prompt = unit[0].prompt_ids
        ids += prompt
        positions.append(torch.arange(len(prompt)))
        prompt_last = len(ids) - 1
        segment_bounds.append(len(ids))
        for s in unit:
            start = len(ids)
            ids += s.response_ids
            positions.append(torch.arange(len(prompt), len(prompt) + len(s.response_ids)))
            segment_bounds.append(len(ids))
            if s.response_ids:  # token 0 is predicted by the prompt's last token, token j by token j - 1
                logit_positions.append(torch.tensor([prompt_last, *range(start, start + len(s.response_ids) - 1)]))
        unit_bounds.append(len(ids))
    samples = [s for unit in units for s in unit]
    response_lengths = torch.tensor([len(s.response_ids) for s in samples])
    have_rollout = all(s.rollout_logprobs is not None for s in samples)
    cu_seqlens = torch.tensor(unit_bounds, dtype=torch.int32)
    cu_segments = torch.tensor(segment_bounds, dtype=torch.int32)
    routes, routes_counted = pack_unit_routes(units) if real else (None, None)  # router replay
    return PackedMicroBatch(
        input_ids=torch.tensor(ids, dtype=torch.long)[None],
        position_ids=torch.cat(positions)[None],
        cu_seqlens=cu_seqlens,
        max_seqlen=int(cu_seqlens.diff().max()),
        cu_segments=cu_segments,
        max_segment_len=int(cu_segments.diff().max()),
        logit_positions=torch.cat(logit_positions) if logit_positions else torch.zeros(0, dtype=torch.long),
        labels=torch.tensor([t for s in samples for t in s.response_ids], dtype=torch.long),
        advantages=_per_token([s.advantage for s in samples], response_lengths),
        loss_mask=_per_token([s.loss_weight for s in samples], response_lengths),
        seq_index=torch.repeat_interleave(torch.arange(len(samples)), response_lengths),
        group_ids=_per_token([-1 if s.group_id is None else s.group_id for s in samples], response_lengths, torch.long),
        rollout_logprobs=torch.cat([s.rollout_logprobs.float() for s in samples]) if have_rollout else None,
        num_real_tokens=len(ids) if real else 0,
        num_responses=len(samples) if real else 0,
        routes=routes,
        routes_counted=routes_counted,
    )
