"""Attention over a packed row: prompt-once units back to back, none attending to another.

A packed micro-batch is one row `(1, T)` of units `[prompt, r_1, ..., r_k]` (golong/trainer/batch.py):
a prompt token attends causally within its prompt, a token of response r_i attends to the whole prompt
and causally to r_i, never to r_j (j != i) nor to another unit. transformers' "sdpa"/"eager" paths
given only position ids let tokens attend across sequence boundaries, and a dense [T, T] mask costs
O(T^2) memory. Instead the model runs with an attention implementation that receives the layout as
forward kwargs, which transformers hands unchanged to every attention call. They describe the WHOLE
row in row coordinates (no per-rank state), so a sequence-parallel wrapper that gives the inner
attention the whole row with a subset of heads can pass them on as they are:

    cu_seq_lens_q, cu_seq_lens_k  (U+1,) int32  unit boundaries (the names transformers' flash path uses)
    max_length_q, max_length_k    int           longest unit
    cu_segments                   (S+1,) int32  segment boundaries: each unit's prompt, then each response
    segment_block_mask            BlockMask     flex only: the same layout as a block-sparse mask, built
                                                once per forward (`prompt_once_block_mask`), any head count

Implementations (`model.attention`):
- CPU: `golong_per_sequence`, exact SDPA: per unit the prompt causally once, then each response's
  queries against [prompt keys; own keys] with a bottom-right causal mask (cost: sum of
  prompt^2 + response x (prompt + response)). A unit with one response is one causal call.
- CUDA, prompt-once (`trainer.share_prompt`): `golong_flex_prompt_once`, torch's flex_attention
  with a block mask built from the unit/segment boundaries tile by tile (never a [T, T] mask: torch's
  `create_block_mask` would hold ~11 bytes per pair, ~1.3 TiB at a 360K-token row): no copy of a
  prompt's keys/values per response, fully masked tiles skipped, the mask_mod only on partial tiles.
- CUDA, one response per unit: flash-attn's varlen kernel through transformers' `flash_attention_2`
  when flash-attn is installed, else `golong_torch_varlen` (PyTorch's own `varlen_attn`).

    attn_implementation = resolve_attention("auto", torch.device("cpu"), share_prompt=True)  # before from_pretrained
    model(input_ids, position_ids=..., **packed_attention_kwargs(cu_seqlens, max_seqlen, cu_segments))
"""
from __future__ import annotations

import functools
import importlib.util
import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PER_SEQUENCE = "golong_per_sequence"
TORCH_VARLEN = "golong_torch_varlen"
FLEX_PROMPT_ONCE = "golong_flex_prompt_once"
PROMPT_ONCE_IMPLEMENTATIONS = (PER_SEQUENCE, FLEX_PROMPT_ONCE)  # those that honour cu_segments


def packed_attention_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int, cu_segments: torch.Tensor | None = None) -> dict:
    """The forward kwargs that carry a packed row's layout down to every attention call.
    Without `cu_segments` every unit is one causal sequence (one response per unit)."""
    kwargs = {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": max_seqlen, "max_length_k": max_seqlen}
    if cu_segments is not None:
        kwargs["cu_segments"] = cu_segments
    return kwargs


def one_response_per_unit(cu_seqlens: torch.Tensor, cu_segments: torch.Tensor | None) -> bool:
    """Whether every unit is [prompt, one response]: then a unit is an ordinary causal sequence."""
    return cu_segments is None or cu_segments.numel() <= 2 * (cu_seqlens.numel() - 1) + 1


def _bottom_right_causal(queries: int, keys: int, device) -> torch.Tensor:
    """(queries, keys) bool: query i sees keys 0 .. keys - queries + i (the last query sees every key)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def per_sequence_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, cu_seq_lens_q=None, cu_segments=None, **kwargs):
    """Exact attention over the units of a packed row on SDPA (the CPU path; also correct on CUDA).

    query (1, Hq, T, D), key/value (1, Hkv, T, D) as transformers hands them (any Hq, Hkv with Hq a
    multiple of Hkv); returns (1, T, Hq, D).
    """
    if cu_seq_lens_q is None:
        raise ValueError(f"{PER_SEQUENCE} attention needs the packed row's boundaries: pass "
                         "golong.trainer.attention.packed_attention_kwargs(...) to the model's forward")
    if sliding_window is not None:
        raise NotImplementedError(f"{PER_SEQUENCE} attention does not implement sliding-window layers")
    if query.shape[0] != 1:
        raise ValueError(f"a packed micro-batch is one row, got batch size {query.shape[0]}")
    attend = functools.partial(F.scaled_dot_product_attention, dropout_p=dropout if module.training else 0.0,
                               scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    units = cu_seq_lens_q.tolist()
    segments = cu_segments.tolist() if cu_segments is not None else units
    out = torch.empty_like(query)
    s = 0  # index into segments
    for start, end in zip(units[:-1], units[1:]):
        while segments[s] < start:
            s += 1
        bounds = list(itertools.takewhile(lambda b: b <= end, segments[s:]))  # start, prompt end, response ends...
        if len(bounds) <= 3:  # [prompt, one response]: one causal sequence
            out[:, :, start:end] = attend(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True)
            continue
        prompt_end = bounds[1]
        out[:, :, start:prompt_end] = attend(query[:, :, start:prompt_end], key[:, :, start:prompt_end],
                                             value[:, :, start:prompt_end], is_causal=True)
        for a, b in zip(bounds[1:-1], bounds[2:]):
            if a == b:
                continue  # an empty response
            k = torch.cat([key[:, :, start:prompt_end], key[:, :, a:b]], dim=2)
            v = torch.cat([value[:, :, start:prompt_end], value[:, :, a:b]], dim=2)
            out[:, :, a:b] = attend(query[:, :, a:b], k, v, attn_mask=_bottom_right_causal(b - a, k.shape[2], query.device))
    return out.transpose(1, 2).contiguous(), None


def torch_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                           sliding_window=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                           max_length_q=None, max_length_k=None, cu_segments=None, **kwargs):
    """CUDA only: PyTorch's FlashAttention varlen kernel over the packed row (no flash-attn package).
    One response per unit only: each unit is one causal sequence."""
    from torch.nn.attention.varlen import varlen_attn

    if cu_seq_lens_q is None:
        raise ValueError(f"{TORCH_VARLEN} attention needs packed_attention_kwargs(...) in the forward call")
    if not one_response_per_unit(cu_seq_lens_q, cu_segments):
        raise ValueError(f"{TORCH_VARLEN} attention cannot attend prompt-once groups: use model.attention=flex "
                         "(or auto), or trainer.share_prompt=false")
    if dropout or sliding_window is not None:
        raise NotImplementedError(f"{TORCH_VARLEN} attention supports neither dropout nor sliding windows")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    cu = cu_seq_lens_q.to(torch.int32)
    out = _call_varlen(varlen_attn, q, k, v, cu, cu_seq_lens_k.to(torch.int32), max_length_q, max_length_k, scaling)
    return out.unsqueeze(0), None


def _call_varlen(varlen_attn, q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """Causal varlen attention across torch versions: torch 2.12+ takes keyword-only `scale`, `window_size`
    ((-1, 0) = causal) and `enable_gqa`; torch 2.11 the first two only (key/value heads repeated here); the
    first release of the API `is_causal` and no scale (its fixed 1/sqrt(D) is rescaled through q)."""
    params = _varlen_parameters(varlen_attn)
    kwargs = {}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
    elif k.shape[1] != q.shape[1]:  # (T, Hkv, D) -> (T, Hq, D): query head h reads key/value head h // (Hq / Hkv)
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6 * scale:
        q = q * (scale * q.shape[-1] ** 0.5)  # the fixed 1/sqrt(D) times this factor gives `scale`
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


@functools.cache
def _varlen_parameters(fn) -> frozenset:
    import inspect

    return frozenset(inspect.signature(fn).parameters)


def segment_ids(cu_seqlens: torch.Tensor, cu_segments: torch.Tensor, num_tokens: int):
    """Per row position: (unit id, segment id, whether the token is a prompt token), all (T,)."""
    positions = torch.arange(num_tokens, device=cu_segments.device, dtype=torch.int32)
    unit = torch.bucketize(positions, cu_seqlens[1:].to(positions), right=True)
    segment = torch.bucketize(positions, cu_segments[1:].to(positions), right=True)
    segment_is_prompt = torch.isin(cu_segments[:-1].to(positions), cu_seqlens[:-1].to(positions))
    return unit, segment, segment_is_prompt[segment]


def prompt_once_mask_mod(unit: torch.Tensor, segment: torch.Tensor, is_prompt: torch.Tensor):
    """flex_attention's mask_mod of the layout: same unit, causal in the row, and the key is a
    prompt token or in the query's own segment (a response never sees another response)."""
    def mask_mod(b, h, q, k):
        return (unit[q] == unit[k]) & (k <= q) & (is_prompt[k] | (segment[q] == segment[k]))
    return mask_mod


FLEX_BLOCK_SIZE = 128  # flex_attention's default sparse block (query and key/value tiles alike)


def _causal_pairs(qa, qb, ka, kb):
    """Number of (q, k) with qa <= q < qb, ka <= k < kb and k <= q, elementwise over int64 tensors:
    for q in [max(qa, ka), min(qb, kb)) the keys ka..q (an arithmetic series), for q >= kb all kb - ka."""
    lo, hi = torch.maximum(qa, ka), torch.minimum(qb, kb)
    n = (hi - lo).clamp(min=0)
    series = n * (lo + hi + 1 - 2 * ka) // 2  # sum of (q + 1 - ka) over q in [lo, hi)
    return series + (qb - torch.maximum(qa, kb)).clamp(min=0) * (kb - ka).clamp(min=0)


def prompt_once_block_sets(cu_seqlens: torch.Tensor, cu_segments: torch.Tensor, num_tokens: int,
                           block_size: int = FLEX_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Which (query block, key block) tiles of the layout are partly and which fully allowed: two
    (ceil(T / block), ceil(T / block)) bool tensors, the same sets torch's `create_block_mask` finds
    (a tile holding padding past T is at most partial), computed without any [T, T] tensor.

    The allowed (q, k) pairs of a row are disjoint pieces, one or two per segment: every segment's
    causal triangle (q, k both in it, k <= q), and for each response the rectangle of its queries
    against its unit's prompt keys (all earlier than the queries, so "k <= q" holds there too). Each
    piece is counted exactly in each tile it covers (`_causal_pairs`) and the counts summed per tile:
    a tile is full when its count is block^2, partial when it is between. Cost: the tiles the pieces
    cover (at most a few times the tiles with any allowed pair), never tokens squared."""
    device = cu_segments.device
    seg = cu_segments.to(device=device, dtype=torch.int64)
    units = cu_seqlens.to(device=device, dtype=torch.int64)
    starts, ends = seg[:-1], seg[1:]
    if seg[0] != 0 or seg[-1] != num_tokens or units[-1] != num_tokens or (ends < starts).any():
        raise ValueError(f"cu_segments must rise from 0 to the row's {num_tokens} tokens (and cu_seqlens end there), "
                         f"got cu_seqlens {cu_seqlens.tolist()}, cu_segments {cu_segments.tolist()}")
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    is_prompt = torch.isin(starts, units[:-1])  # as segment_ids decides it
    unit_start = units[torch.bucketize(starts, units[1:], right=True)]
    prompt_end = seg[torch.searchsorted(seg, unit_start, right=True)]  # end of the unit's prompt segment
    resp = ~is_prompt
    qa = torch.cat([starts, starts[resp]])  # pieces: triangles, then response x prompt rectangles
    qb = torch.cat([ends, ends[resp]])
    ka = torch.cat([starts, unit_start[resp]])
    kb = torch.cat([ends, prompt_end[resp]])
    # each piece's tiles: query tiles qa//B .. (qb-1)//B times key tiles ka//B .. (kb-1)//B
    q0, k0 = qa // block_size, ka // block_size
    rows, cols = (qb - 1) // block_size - q0 + 1, (kb - 1) // block_size - k0 + 1
    piece = torch.repeat_interleave(torch.arange(qa.numel(), device=device), rows * cols)
    offset = torch.cumsum(rows * cols, 0) - rows * cols
    local = torch.arange(piece.numel(), device=device) - offset[piece]
    qi, kj = q0[piece] + local // cols[piece], k0[piece] + local % cols[piece]
    count = _causal_pairs(torch.maximum(qa[piece], qi * block_size), torch.minimum(qb[piece], (qi + 1) * block_size),
                          torch.maximum(ka[piece], kj * block_size), torch.minimum(kb[piece], (kj + 1) * block_size))
    num_blocks = -(-num_tokens // block_size)
    per_tile = torch.zeros(num_blocks * num_blocks, dtype=torch.int32, device=device)  # at most block^2 each
    per_tile.index_add_(0, qi * num_blocks + kj, count.to(torch.int32))
    per_tile = per_tile.view(num_blocks, num_blocks)
    full = per_tile == block_size * block_size
    return (per_tile > 0) & ~full, full


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's row format of a (rows, cols) bool tile set, with batch and head dims of 1: the count
    per row (1, 1, rows) and the column indices, present ones first, then the absent ones, each ascending
    (1, 1, rows, cols), int32; what torch's stable descending argsort gives, by a cumulative sum instead."""
    tiles = tiles.contiguous()  # the transposed sets too: the kernels read the index lists row-major
    cols = torch.arange(tiles.shape[-1], dtype=torch.int32, device=tiles.device).expand_as(tiles)
    present = torch.cumsum(tiles, -1, dtype=torch.int32)  # present tiles up to and including each column
    counts = present[:, -1:]
    slot = torch.where(tiles, present - 1, counts + cols - present)  # where each column goes in the list
    indices = torch.empty_like(slot).scatter_(-1, slot.long(), cols)
    return counts[:, 0][None, None].contiguous(), indices[None, None]


def prompt_once_block_mask(cu_seqlens: torch.Tensor, cu_segments: torch.Tensor, num_tokens: int,
                           block_size: int = FLEX_BLOCK_SIZE):
    """The layout as a flex_attention BlockMask over the whole row (every head and batch entry alike),
    built from the unit and segment boundaries (`prompt_once_block_sets`): full tiles skip the mask_mod,
    partial ones apply it. Memory O((T / block)^2) (torch's own format, 32 MB of int32 at 360K tokens)
    where torch's `create_block_mask` would first evaluate the mask_mod on all T^2 pairs."""
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = prompt_once_block_sets(cu_seqlens, cu_segments, num_tokens, block_size)  # checks the bounds
    mask_mod = prompt_once_mask_mod(*segment_ids(cu_seqlens, cu_segments, num_tokens))
    # the backward pass's per-key-tile lists are the transposed sets (BlockMask.from_kv_blocks would derive
    # them through another dense round trip)
    return BlockMask((num_tokens, num_tokens), *_ordered(partial), *_ordered(full), *_ordered(partial.T),
                     *_ordered(full.T), BLOCK_SIZE=(block_size, block_size), mask_mod=mask_mod)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)  # the fused kernel; eager flex materialises the scores


def flex_prompt_once_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                               sliding_window=None, cu_seq_lens_q=None, cu_segments=None,
                               segment_block_mask=None, **kwargs):
    """Prompt-once attention with torch's flex_attention: one call over the whole row, no per-response
    copy of a prompt's keys/values. query (1, Hq, T, D), key/value (1, Hkv, T, D); returns (1, T, Hq, D).
    Fused (compiled) on CUDA; on CPU torch runs it eagerly and forward only (tests check its mask)."""
    from torch.nn.attention.flex_attention import flex_attention

    if cu_seq_lens_q is None:
        raise ValueError(f"{FLEX_PROMPT_ONCE} attention needs packed_attention_kwargs(...) in the forward call")
    if dropout or sliding_window is not None:
        raise NotImplementedError(f"{FLEX_PROMPT_ONCE} attention supports neither dropout nor sliding windows")
    if cu_segments is None:  # one response per unit: each unit is its own segment after the prompt
        cu_segments = cu_seq_lens_q
    if segment_block_mask is None:
        segment_block_mask = prompt_once_block_mask(cu_seq_lens_q, cu_segments, query.shape[2])
    attend = _compiled_flex_attention() if query.is_cuda else flex_attention
    out = attend(query, key, value, block_mask=segment_block_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PER_SEQUENCE, per_sequence_attention)
AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
AttentionInterface.register(FLEX_PROMPT_ONCE, flex_prompt_once_attention)


def resolve_attention(choice: str, device: torch.device, share_prompt: bool = False) -> str:
    """The `attn_implementation` for `from_pretrained` that gives packed rows exact attention.
    With `share_prompt` (prompt-once units) only implementations that honour `cu_segments` qualify."""
    if choice == "per_sequence" or (choice == "auto" and device.type == "cpu"):
        return PER_SEQUENCE
    # --- CUDA-only branch: flex_attention (prompt-once) and varlen FlashAttention kernels -----
    if device.type != "cuda":
        raise ValueError(f"model.attention={choice!r} needs CUDA; on {device.type} use 'per_sequence' or 'auto'")
    if choice == "flex" or (choice == "auto" and share_prompt):
        return FLEX_PROMPT_ONCE
    if share_prompt:
        raise ValueError(f"model.attention={choice!r} attends each unit as one causal sequence, which would let a "
                         "response see its group's other responses: use model.attention=flex (or auto), "
                         "or trainer.share_prompt=false")
    has_flash_attn = importlib.util.find_spec("flash_attn") is not None
    if choice == "flash_attention_2" and not has_flash_attn:
        raise ValueError("model.attention='flash_attention_2' needs the flash-attn package; "
                         "install it or use 'torch_varlen' (PyTorch's own varlen kernel)")
    if choice == "flash_attention_2" or (choice == "auto" and has_flash_attn):
        return "flash_attention_2"
    return TORCH_VARLEN
