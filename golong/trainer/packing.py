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
is one prompt and some or all of its responses (`plan_units`), and `plan_micro_batches` balances the
units' token counts over ranks and micro-batches exactly as it balances sequences.

    units = plan_units(samples, max_tokens, share_prompt=True)                # lists of sample indices
    plan = plan_micro_batches([unit_num_tokens([samples[i] for i in u]) for u in units], max_tokens, dp_size)
    mbs = [pack_units([[samples[i] for i in units[u]] for u in mb]) for mb in plan[rank]]
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from golong.trainer.batch import TrainSample, unit_num_tokens


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


def plan_units(samples: Sequence[TrainSample], max_tokens: int, share_prompt: bool = True) -> list[list[int]]:
    """Prompt-once units: lists of indices into `samples`, each packed as [prompt, r_1, ..., r_k].

    share_prompt off: one unit per sample. On: the samples of one `group_id` (in order of first
    appearance; samples without a group_id stay alone) form one unit when prompt + all responses fit
    in `max_tokens`. A larger group is split into the fewest units that fit, each repeating the
    prompt: its responses, longest first, go to the least-loaded unit with room for them (the same
    greedy as micro-batches, with a budget of max_tokens - prompt length), so the units of a group
    have similar sizes. A response that does not fit even beside its prompt alone gets a unit of its
    own (oversized, like an oversized sequence). The prompt then runs ceil(group tokens / budget)
    times or so, still far fewer than once per response.
    """
    if not share_prompt:
        return [[i] for i in range(len(samples))]
    groups: dict[object, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(("group", s.group_id) if s.group_id is not None else ("alone", i), []).append(i)
    units = []
    for members in groups.values():
        prompt = samples[members[0]].prompt_ids
        if any(samples[i].prompt_ids != prompt for i in members[1:]):
            raise ValueError(f"samples of group_id {samples[members[0]].group_id} have different prompt_ids")
        if unit_num_tokens([samples[i] for i in members]) <= max_tokens:
            units.append(members)
            continue
        budget = max(max_tokens - len(prompt), 1)
        lengths = [max(len(samples[i].response_ids), 1) for i in members]
        bins = plan_micro_batches(lengths, budget, 1)[0]
        units += [[members[k] for k in sorted(b)] for b in bins if b]
    return units
