"""Which sequences go to which data-parallel rank and into which packed micro-batch.

Prompt+response lengths in long-context RL span three orders of magnitude (Table 12: prompts up
to 160K, responses up to 16K). Padding them to a common length wastes most of the compute, so
sequences are packed by a token budget instead, in two greedy passes:

1. ranks: longest sequence first onto the least-loaded rank (LPT), so rank token loads agree;
2. micro-batches: every rank splits its sequences into the same number K of micro-batches
   (ZeRO-3 gathers parameters in every forward and backward, so ranks must run equally many), longest
   first into the least-loaded micro-batch it fits in; K starts at the fewest the budget allows and
   grows until every rank fits. A rank with fewer sequences than K gets empty micro-batches, which
   the engine runs as zero-weight fillers.

With prompt-once training (`trainer.share_prompt`) the things packed are units, not sequences: a unit
is one prompt and some or all of its responses (`plan_units`: Groups again, sharing the prompt view), and
`plan_micro_batches` balances the units' token counts over ranks and micro-batches exactly as it
balances sequences. `plan_step` is the whole stage for one rank:

    units = plan_units(groups, max_tokens, share_prompt=True)                 # list[Group]
    plan = plan_micro_batches([u.num_tokens for u in units], max_tokens, dp_size)
    mbs = [pack_groups([units[u] for u in mb]) for mb in plan[dp_rank]]
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from golong.trainer.batch import Group, PackedMicroBatch, pack_groups
from golong.world import ParallelLayout


def _balance_ranks(lengths: Sequence[int], dp_size: int) -> list[list[int]]:
    """Sequence indices per rank, longest first onto the least-loaded rank."""
    heap = [(0, rank) for rank in range(dp_size)]  # (tokens, rank)
    ranks: list[list[int]] = [[] for _ in range(dp_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, rank = heapq.heappop(heap)
        ranks[rank].append(i)
        heapq.heappush(heap, (load + lengths[i], rank))
    return ranks


def _fill_micro_batches(indices: list[int], lengths: Sequence[int], count: int, max_tokens: int) -> list[list[int]] | None:
    """`indices` (longest first) into exactly `count` micro-batches within budget, or None if they do not fit."""
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for i in indices:
        fitting = [b for b in range(count) if loads[b] + lengths[i] <= max_tokens]
        if not fitting:  # over budget on its own: it may only sit alone
            fitting = [b for b in range(count) if not bins[b]] if lengths[i] > max_tokens else []
        if not fitting:
            return None
        b = min(fitting, key=lambda b: (loads[b], b))
        bins[b].append(i)
        loads[b] += lengths[i]
    return bins


def _fewest_micro_batches(lengths: list[int], max_tokens: int) -> int:
    """A lower bound: each oversized sequence alone, the rest at least filling whole budgets."""
    fitting = [n for n in lengths if n <= max_tokens]
    return len(lengths) - len(fitting) + math.ceil(sum(fitting) / max_tokens)


def plan_micro_batches(lengths: Sequence[int], max_tokens: int, dp_size: int) -> list[list[list[int]]]:
    """Per data-parallel rank, its micro-batches as lists of indices into `lengths`.

    Every rank gets the same number of micro-batches (some may be empty); no micro-batch holds more
    than `max_tokens` tokens unless it is a single sequence longer than that; rank token loads are
    balanced (LPT). Micro-batches are ordered largest first on every rank, so ranks meet at each
    micro-batch's collectives with similar work done.
    """
    if max_tokens < 1 or dp_size < 1:
        raise ValueError(f"need max_tokens >= 1 and dp_size >= 1, got {max_tokens} and {dp_size}")
    if any(n < 1 for n in lengths):
        raise ValueError("every sequence needs at least one token")
    ranks = _balance_ranks(lengths, dp_size)
    count = max(1, max(_fewest_micro_batches([lengths[i] for i in rank], max_tokens) for rank in ranks))
    while True:
        plans = [_fill_micro_batches(rank, lengths, count, max_tokens) for rank in ranks]
        if all(plan is not None for plan in plans):
            break
        count += 1  # terminates: with one micro-batch per sequence everything fits
    return [sorted((sorted(mb) for mb in plan), key=lambda mb: -sum(lengths[i] for i in mb)) for plan in plans]


def plan_units(groups: Sequence[Group], max_tokens: int, share_prompt: bool = True) -> list[Group]:
    """Prompt-once units, each packed as [prompt, r_1, ..., r_k]: Groups sharing their group's prompt view.

    share_prompt off: one unit per response. On: a group is one unit when prompt + all responses fit in
    `max_tokens`. A larger group is split into the fewest units that fit, each repeating the prompt: its
    responses, longest first, go to the least-loaded unit with room for them (the same greedy as
    micro-batches, with a budget of max_tokens - prompt length), so the units of a group have similar
    sizes. A response that does not fit even beside its prompt alone gets a unit of its own (oversized,
    like an oversized sequence). The prompt then runs ceil(group tokens / budget) times or so, still far
    fewer than once per response.
    """
    if not share_prompt:
        return [unit for g in groups for unit in g.split()]
    units = []
    for group in groups:
        if group.num_tokens <= max_tokens:
            units.append(group)
            continue
        budget = max(max_tokens - len(group.prompt_ids), 1)
        bins = plan_micro_batches(list(group.response_lengths.clip(min=1)), budget, 1)[0]
        units += [group.select(sorted(b)) for b in bins if b]
    return units


class RowExtras(Protocol):
    """Per-row-token inputs beside the tokens (MoE router replay's routes: golong/replay/trainer.py),
    the planner's one hook. `fetch` gets every rank's units (a collective: every rank calls it), `pack`
    a micro-batch's units, laid out like their tokens."""

    def fetch(self, units_per_rank: list[list[Group]]) -> None: ...

    def pack(self, units: list[Group]) -> dict: ...


@dataclass
class StepBatch:
    """This rank's share of the step, packed."""

    micro_batches: list[PackedMicroBatch]  # K of them, K equal on every rank (fillers where a rank has less)
    units: list[Group]  # this rank's units, in micro-batch order
    counted: list[Group]  # the units a sum over ranks counts (SP: only on an SP group's first rank)
    num_units: int  # units of the whole step (every rank)
    num_responses: int  # responses of the whole step


def plan_step(groups: list[Group], layout: ParallelLayout, max_tokens_per_rank: int, share_prompt: bool,
              extras: RowExtras | None = None) -> StepBatch:
    """Stage 5 of a step for this rank: every rank plans the same (same groups), takes its SP group's
    micro-batches and packs them. An SP group's row holds sp x max_tokens_per_rank tokens, and every
    rank of the group gets the group's micro-batches."""
    max_tokens = max_tokens_per_rank * layout.sp
    units = plan_units(groups, max_tokens, share_prompt)
    plan = plan_micro_batches([u.num_tokens for u in units], max_tokens, layout.dp_size)
    mine = [[units[u] for u in mb] for mb in plan[layout.dp_rank]]
    micro_batches = [pack_groups(mb) for mb in mine]
    if extras is not None:  # e.g. routes point to point from the ranks that generated them
        extras.fetch([[units[u] for mb in plan[layout.dp_rank_of(r)] for u in mb] for r in range(layout.world_size)])
        for mb, mb_units in zip(micro_batches, mine):
            if mb_units:
                mb.extras = extras.pack(mb_units)
    flat = [u for mb in mine for u in mb]
    return StepBatch(micro_batches=micro_batches, units=flat, counted=flat if layout.counts_once else [],
                     num_units=len(units), num_responses=sum(len(g) for g in groups))
