"""What the trainer trains on: prompt groups (`Group`) and a packed micro-batch of them.

A `Group` is one prompt and responses to it, held as arrays: the prompt an int32 view into the prompt
set (never copied), each response its sampled int32 ids. The step's groups come from the collector's
rollouts (`Group.from_rollouts`); the planner (golong/trainer/packing.py) splits a group too long for
one row into units (Groups again, sharing the prompt view); the packer concatenates units' arrays into
one row, with no per-token Python list and no prompt comparison (a Group has one prompt by construction).

A packed micro-batch is one row of *units* back to back, with no padding. A unit is one prompt
followed by some or all of its responses (prompt-once groups, `trainer.share_prompt`):

    row:       [ p p p p | a a a | b b | q q | c c c c ]      two units: [prompt p, a, b] and [prompt q, c]
    positions:   0 1 2 3   4 5 6   4 5   0 1   2 3 4 5       each response continues from its prompt's length
    segments:    0 0 0 0   1 1 1   2 2   3 3   4 4 4 4       the prompt and each response are segments

Attention is exact per response: a prompt token attends causally within its prompt; a token of
response r attends to the whole prompt of its unit and causally to r, never to another response and
never to another unit. So every response sees exactly what it was sampled with (same tokens, same
positions), and the prompt runs once per unit instead of once per response. With share_prompt off
every unit holds one response (`Group.split`): the layout is then plain `prompt + response` sequences.

The layout reaches the attention as row coordinates (`golong.trainer.attention.packed_attention_kwargs`):
`cu_seqlens` are the unit boundaries, `cu_segments` the segment boundaries. Only response tokens
reach the LM head: `logit_positions` are the row positions whose hidden states predict them (the
first token of every response of a unit is predicted by the prompt's last token, so that position
repeats once per response; every later token by the response's previous token).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


def _ids(values, what: str) -> np.ndarray:
    """An int32 1-D array of token ids: a view when `values` already is one (a prompt set's slice)."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {array.shape} dtype {array.dtype}")
    if array.dtype != np.int32 and array.size and (array.min() < 0 or array.max() >= 2**31):
        raise ValueError(f"{what} holds token ids outside 0..2**31-1 (min {array.min()}, max {array.max()})")
    return array.astype(np.int32, copy=False)


def _per_response(values, k: int, what: str) -> np.ndarray:
    """(k,) float32, a scalar repeated; a fresh, writable array."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 0:
        return np.full(k, array, dtype=np.float32)
    if array.shape != (k,):
        raise ValueError(f"{what} has shape {array.shape} for {k} responses: one per response (or one number for all)")
    return array.copy()


@dataclass(eq=False)  # holds arrays: compared by identity
class Group:
    """One prompt and k responses to train on: a prompt group of the step, or a unit of one (the planner
    splits a group too long for one row). Built by keyword; lists are accepted and turned into arrays."""

    prompt_ids: np.ndarray  # (P,) int32: a view into the prompt set where it comes from one (never copied)
    response_ids: list[np.ndarray]  # k x (R_i,) int32: the sampled tokens, EOS included
    advantages: np.ndarray  # (k,) float32: one advantage per response
    rollout_logprobs: list[np.ndarray] | None = None  # k x (R_i,) float32: log-probs the rollout sampled with
    loss_weights: np.ndarray | None = None  # (k,) float32: scales each response's loss; 0 leaves it out (None: 1)
    group_id: int = -1  # the step's prompt group (group-token-mean counts by it; -1: not in a group)
    response_index: np.ndarray | None = None  # (k,) int64: the responses' positions in the step's rollouts
    #                                           (None: 0..k-1); MoE router replay finds their routes by it

    def __post_init__(self):
        self.prompt_ids = _ids(self.prompt_ids, "prompt_ids")
        if not len(self.prompt_ids):
            raise ValueError("a Group needs at least one prompt token (the first response token is predicted from it)")
        self.response_ids = [_ids(r, "each response") for r in self.response_ids]
        k = len(self.response_ids)
        self.advantages = _per_response(self.advantages, k, "advantages")
        self.loss_weights = _per_response(1.0 if self.loss_weights is None else self.loss_weights, k, "loss_weights")
        self.response_index = (np.arange(k, dtype=np.int64) if self.response_index is None
                               else np.asarray(self.response_index, dtype=np.int64))
        if self.response_index.shape != (k,):
            raise ValueError(f"response_index has shape {self.response_index.shape}, expected ({k},)")
        if self.rollout_logprobs is not None:
            self.rollout_logprobs = [np.asarray(lp, dtype=np.float32) for lp in self.rollout_logprobs]
            if len(self.rollout_logprobs) != k:
                raise ValueError(f"rollout_logprobs has {len(self.rollout_logprobs)} entries for {k} responses: "
                                 "one array per response")
            for r, lp in zip(self.response_ids, self.rollout_logprobs):
                if lp.shape != r.shape:
                    raise ValueError(f"rollout_logprobs has shape {lp.shape} for a response of {len(r)} tokens: "
                                     "one per response token")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def response_lengths(self) -> np.ndarray:  # (k,) int64
        return np.fromiter((len(r) for r in self.response_ids), dtype=np.int64, count=len(self))

    @property
    def num_tokens(self) -> int:
        """Tokens of the group packed prompt-once: the prompt once, then every response."""
        return len(self.prompt_ids) + int(self.response_lengths.sum())

    @property
    def in_loss(self) -> np.ndarray:
        """(k,) bool: which responses count in the loss and its denominator (weight != 0, at least one token)."""
        return (self.loss_weights != 0) & (self.response_lengths > 0)

    def select(self, positions: Sequence[int]) -> Group:
        """The responses at `positions` (in that order) with the same prompt view: a unit of this group."""
        return Group(prompt_ids=self.prompt_ids, response_ids=[self.response_ids[i] for i in positions],
                     advantages=self.advantages[list(positions)], loss_weights=self.loss_weights[list(positions)],
                     rollout_logprobs=None if self.rollout_logprobs is None else [self.rollout_logprobs[i] for i in positions],
                     group_id=self.group_id, response_index=self.response_index[list(positions)])

    def split(self) -> list[Group]:
        """One unit per response (share_prompt off: plain `prompt + response` sequences)."""
        return [self.select([i]) for i in range(len(self))]

    @classmethod
    def from_rollouts(cls, rollouts, prompts, advantages: torch.Tensor, overlong_mask: bool) -> list[Group]:
        """The step's groups from the collector's `Rollouts` (responses in one global order, a group's
        responses contiguous or not) and its advantages (N,): one Group per group_index, in order of first
        appearance, each response exactly as sampled (never decoded and re-encoded). `prompts` is the
        prompt set's PromptIds: a group's prompt_ids is a view of its flat array. overlong_mask gives the
        truncated responses weight 0."""
        members: dict[int, list[int]] = {}
        for i, g in enumerate(rollouts.group_index.tolist()):
            members.setdefault(g, []).append(i)
        advantages = advantages.detach().to(torch.float32).cpu().numpy()
        weights = np.where(np.asarray(rollouts.truncated, dtype=bool) & overlong_mask, 0.0, 1.0).astype(np.float32)
        return [cls(prompt_ids=prompts.view(rollouts.example_index[idx[0]]),
                    response_ids=[rollouts.response_ids[i] for i in idx], advantages=advantages[idx],
                    rollout_logprobs=[rollouts.rollout_logprobs[i] for i in idx], loss_weights=weights[idx],
                    group_id=g, response_index=np.asarray(idx, dtype=np.int64))
                for g, idx in members.items()]


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
    loss_mask: torch.Tensor  # (R,) fp32: the response's loss weight (0: out of the loss)
    seq_index: torch.Tensor  # (R,) int64: which response of this micro-batch each token belongs to (0..N-1)
    group_ids: torch.Tensor  # (R,) int64: the token's Group.group_id (-1: none)
    rollout_logprobs: torch.Tensor | None  # (R,) fp32, None when a unit has none
    num_real_tokens: int  # tokens of real units (a filler micro-batch has 0)
    num_responses: int  # N (a filler has 0)
    old_logprobs: torch.Tensor | None = None  # (R,) set by PolicyEngine.old_logprobs (or by forward_backward)
    ref_logprobs: torch.Tensor | None = None  # (R,) set by PolicyEngine.ref_logprobs (KL only)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # (T, ...) per row token, passed to the model's
    #   forward and split along the row by sequence parallelism: MoE router replay's "routes"/"routes_counted"

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes for this micro-batch (fillers included)."""
        return self.input_ids.shape[1]

    def to(self, device: torch.device) -> PackedMicroBatch:
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in self.__dict__.items()}
        moved["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return PackedMicroBatch(**moved)


# A micro-batch with no units still runs a forward/backward (weight 0) so that every rank makes the
# same ZeRO-3 collective calls; it is one two-token sequence whose response token has loss weight 0.
def _filler() -> Group:
    return Group(prompt_ids=[0], response_ids=[[0]], advantages=[0.0], rollout_logprobs=[[0.0]], loss_weights=[0.0])


def pack_groups(units: list[Group]) -> PackedMicroBatch:
    """Pack prompt-once units into one row: arrays concatenated, one Python step per response (never per
    token). No units gives a zero-weight filler."""
    real = bool(units)
    units = units or [_filler()]
    prompt_lens = np.fromiter((len(u.prompt_ids) for u in units), dtype=np.int64, count=len(units))
    lengths = [u.response_lengths for u in units]  # per unit (k,)
    resp_lens = np.concatenate(lengths)  # (N,)
    # segment lengths in row order: [P_0, R_0_1..R_0_k, P_1, ...]
    seg_lens = np.concatenate([np.concatenate([[p], r]) for p, r in zip(prompt_lens, lengths)])
    cu_segments = np.concatenate([[0], np.cumsum(seg_lens)])
    unit_lens = prompt_lens + np.array([r.sum() for r in lengths], dtype=np.int64)
    cu_seqlens = np.concatenate([[0], np.cumsum(unit_lens)])
    ids = np.concatenate([a for u in units for a in (u.prompt_ids, *u.response_ids)])
    # positions: each segment restarts at its unit's offset (0 for a prompt, P for every response)
    seg_offsets = np.concatenate([np.concatenate([[0], np.full(len(r), p)]) for p, r in zip(prompt_lens, lengths)])
    seg_starts = np.repeat(cu_segments[:-1] - seg_offsets, seg_lens)
    positions = np.arange(len(ids), dtype=np.int64) - seg_starts
    # logit positions: response token j is predicted by row position (response start + j - 1); its first
    # token by the prompt's last token (the unit start + P - 1)
    is_response = np.concatenate([np.concatenate([[False], np.ones(len(r), dtype=bool)]) for r in lengths])
    resp_starts = cu_segments[:-1][is_response]  # (N,)
    unit_of_resp = np.repeat(np.arange(len(units)), [len(r) for r in lengths])
    prompt_last = (cu_seqlens[:-1] + prompt_lens - 1)[unit_of_resp]  # (N,)
    seq_index = np.repeat(np.arange(len(resp_lens)), resp_lens)  # (R,)
    token_in_resp = np.arange(int(resp_lens.sum())) - np.repeat(np.cumsum(resp_lens) - resp_lens, resp_lens)
    logit_positions = np.where(token_in_resp == 0, prompt_last[seq_index], resp_starts[seq_index] + token_in_resp - 1)
    labels = np.concatenate([r for u in units for r in u.response_ids]) if len(resp_lens) else np.zeros(0, np.int32)

    def per_token(values: np.ndarray, dtype) -> torch.Tensor:
        return torch.from_numpy(np.repeat(values, resp_lens).astype(dtype, copy=False))

    have_rollout = all(u.rollout_logprobs is not None for u in units)
    return PackedMicroBatch(
        input_ids=torch.from_numpy(ids.astype(np.int64))[None],
        position_ids=torch.from_numpy(positions)[None],
        cu_seqlens=torch.from_numpy(cu_seqlens.astype(np.int32)),
        max_seqlen=int(unit_lens.max()),
        cu_segments=torch.from_numpy(cu_segments.astype(np.int32)),
        max_segment_len=int(seg_lens.max()),
        logit_positions=torch.from_numpy(logit_positions.astype(np.int64)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        advantages=per_token(np.concatenate([u.advantages for u in units]), np.float32),
        loss_mask=per_token(np.concatenate([u.loss_weights for u in units]), np.float32),
        seq_index=torch.from_numpy(seq_index.astype(np.int64)),
        group_ids=per_token(np.concatenate([np.full(len(u), u.group_id) for u in units]), np.int64),
        rollout_logprobs=(torch.from_numpy(np.concatenate([lp for u in units for lp in u.rollout_logprobs]
                                                          or [np.zeros(0, np.float32)]).astype(np.float32))
                          if have_rollout else None),
        num_real_tokens=len(ids) if real else 0,
        num_responses=len(resp_lens) if real else 0,
    )
