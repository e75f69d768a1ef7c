"""flex_attention's prompt-once BlockMask built from the unit/segment boundaries (`prompt_once_block_mask`):
its tiles against the token-level mask of the layout's rules, against torch's own `create_block_mask`,
compiled flex_attention with it against the exact per-sequence path, and its memory at a 131K-token row."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, create_mask

from golong.trainer.attention import (_compiled_flex_attention, per_sequence_attention, prompt_once_block_mask,
                                      prompt_once_mask_mod, segment_ids)
from golong.trainer.batch import pack_groups
from test_prompt_once import group


def random_layout(seed: int, units: int, max_prompt: int, max_responses: int, max_response: int):
    """(cu_seqlens, cu_segments) int32: units of a prompt (>= 1 token) and responses (possibly empty)."""
    rng = random.Random(seed)
    cu, segments = [0], [0]
    for _ in range(units):
        segments.append(segments[-1] + rng.randint(1, max_prompt))
        for _ in range(rng.randint(1, max_responses)):
            segments.append(segments[-1] + rng.randint(0, max_response))
        cu.append(segments[-1])
    return torch.tensor(cu, dtype=torch.int32), torch.tensor(segments, dtype=torch.int32)


def _packed(groups, share_prompt=True):
    mb = pack_groups(groups if share_prompt else [unit for g in groups for unit in g.split()])
    return mb.cu_seqlens, mb.cu_segments


LAYOUTS = {  # name: (cu_seqlens, cu_segments, tile size)
    **{f"random_{seed}": (*random_layout(seed, 1 + seed % 5, 40, 6, 30), (8, 16)[seed % 2]) for seed in range(6)},
    "single_unit": (torch.tensor([0, 82], dtype=torch.int32), torch.tensor([0, 37, 50, 51, 73, 82], dtype=torch.int32), 8),
    "many_tiny_units": (*random_layout(7, 60, 2, 2, 2), 16),  # several units in one tile
    "multiple_of_tile": (torch.tensor([0, 40, 64], dtype=torch.int32), torch.tensor([0, 16, 32, 40, 48, 64], dtype=torch.int32), 16),
    "long_prompts_default_tile": (*random_layout(8, 2, 300, 4, 120), 128),
    "packed_groups": (*_packed([group(9, [7, 1, 3, 12], 0, seed=0), group(4, [2, 5], 1, seed=1)]), 4),
    "one_response_per_unit": (*_packed([group(9, [7, 1, 3], 0, seed=0)], share_prompt=False), 4),
    "unit_is_one_segment": (torch.tensor([0, 21, 30, 57], dtype=torch.int32),) * 2 + (8,),  # flex's cu_segments=None
}


LISTS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",  # BlockMask's tile lists
         "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")


def rule_mask(cu_seqlens, cu_segments, T):
    """(T, T) bool from the layout's rules, token by token: same unit, key not after the query, and the
    key in the unit's prompt or in the query's own segment."""
    units, segments = cu_seqlens.tolist(), cu_segments.tolist()
    unit = [max(i for i in range(len(units) - 1) if units[i] <= t) for t in range(T)]
    seg = [max(i for i in range(len(segments) - 1) if segments[i] <= t < segments[i + 1]) for t in range(T)]
    prompt = torch.tensor([segments[seg[t]] == units[unit[t]] for t in range(T)])
    unit, seg = torch.tensor(unit), torch.tensor(seg)
    pos = torch.arange(T)
    return (unit[:, None] == unit[None]) & (pos[None] <= pos[:, None]) & (prompt[None] | (seg[:, None] == seg[None]))


def tiles(num_blocks, indices, num_cols):
    """Dense (rows, cols) bool from BlockMask's row format, as its docstring reconstructs it."""
    out = torch.zeros(indices.shape[-2], num_cols, dtype=torch.bool)
    for row in range(indices.shape[-2]):
        out[row, indices[0, 0, row, :num_blocks[0, 0, row]].long()] = True
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_tiles_equal_the_token_mask(name):
    cu_seqlens, cu_segments, B = LAYOUTS[name]
    T = int(cu_seqlens[-1])
    mask = prompt_once_block_mask(cu_seqlens, cu_segments, T, block_size=B)
    n = -(-T // B)
    assert mask.seq_lengths == (T, T) and mask.BLOCK_SIZE == (B, B) and mask.kv_indices.shape == (1, 1, n, n)
    assert all(getattr(mask, f).is_contiguous() and getattr(mask, f).dtype == torch.int32 for f in LISTS)
    partial, full = tiles(mask.kv_num_blocks, mask.kv_indices, n), tiles(mask.full_kv_num_blocks, mask.full_kv_indices, n)
    assert not (partial & full).any()
    # the backward pass's per-key-tile lists are the same sets transposed
    assert torch.equal(tiles(mask.q_num_blocks, mask.q_indices, n), partial.T)
    assert torch.equal(tiles(mask.full_q_num_blocks, mask.full_q_indices, n), full.T)

    expected = rule_mask(cu_seqlens, cu_segments, T)
    # tiles classified exactly: full where every (q, k) of the tile is allowed (a tile past T never is),
    # partial where some are, absent where none
    padded = torch.zeros(n * B, n * B, dtype=torch.bool)
    padded[:T, :T] = expected
    per_tile = padded.view(n, B, n, B).sum((1, 3))
    assert torch.equal(full, per_tile == B * B)
    assert torch.equal(partial, (per_tile > 0) & (per_tile < B * B))
    # what a kernel computes: full tiles all allowed, partial tiles through the mask_mod, the rest skipped
    expand = lambda t: t.repeat_interleave(B, 0).repeat_interleave(B, 1)[:T, :T]  # noqa: E731
    mod = create_mask(mask.mask_mod, None, None, T, T, device="cpu")[0, 0]
    assert torch.equal(expand(full) | (expand(partial) & mod), expected)
    assert expected.any() and (~expected).any()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_same_block_mask_as_create_block_mask(name):
    cu_seqlens, cu_segments, B = LAYOUTS[name]
    T = int(cu_seqlens[-1])
    ours = prompt_once_block_mask(cu_seqlens, cu_segments, T, block_size=B)
    mask_mod = prompt_once_mask_mod(*segment_ids(cu_seqlens, cu_segments, T))
    torch_s = create_block_mask(mask_mod, None, None, T, T, device="cpu", BLOCK_SIZE=B)  # dense T x T inside
    assert ours.seq_lengths == torch_s.seq_lengths and ours.BLOCK_SIZE == torch_s.BLOCK_SIZE
    for field in LISTS:
        a, b = getattr(ours, field), getattr(torch_s, field)
        assert a.dtype == b.dtype == torch.int32 and torch.equal(a, b), field


def test_boundaries_outside_the_row_are_refused():
    cu_seqlens = torch.tensor([0, 10], dtype=torch.int32)
    for cu_segments, T in (([0, 4, 12], 10), ([0, 6, 4, 10], 10), ([0, 4, 10], 12)):
        with pytest.raises(ValueError, match="cu_segments must rise from 0 to the row's"):
            prompt_once_block_mask(cu_seqlens, torch.tensor(cu_segments, dtype=torch.int32), T)


class _Module(torch.nn.Module):
    pass


@pytest.mark.slow
def test_compiled_flex_attention_with_the_mask_equals_exact_attention():
    """The fused (compiled) flex kernel, as CUDA runs it (`_compiled_flex_attention`), here compiled for
    CPU: unlike eager flex_attention (which applies the mask_mod to every pair) it reads the tile lists,
    skipping absent tiles and the mask_mod on full ones, so a wrong tile set changes its output."""
    cu_seqlens = torch.tensor([0, 700, 1000], dtype=torch.int32)  # prompts of 400 and 90 tokens: full tiles
    cu_segments = torch.tensor([0, 400, 530, 531, 700, 790, 900, 1000], dtype=torch.int32)
    T = int(cu_seqlens[-1])
    mask = prompt_once_block_mask(cu_seqlens, cu_segments, T)
    assert mask.full_kv_num_blocks.sum() > 0 and mask.kv_num_blocks.sum() > 0
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, T, 16, generator=g)
    k, v = (torch.randn(1, 2, T, 16, generator=g) for _ in range(2))
    flex = _compiled_flex_attention()(q, k, v, block_mask=mask, scale=0.3, enable_gqa=True).transpose(1, 2)
    exact, _ = per_sequence_attention(_Module().eval(), q.double(), k.double(), v.double(), None, scaling=0.3,
                                      cu_seq_lens_q=cu_seqlens, cu_segments=cu_segments)
    assert (flex.double() - exact).abs().max() < 1e-5
    # not blind: the same kernel with the full tiles dropped (the same tensors' shapes, no recompile) differs
    from torch.nn.attention.flex_attention import BlockMask

    no_full = BlockMask(mask.seq_lengths, mask.kv_num_blocks, mask.kv_indices, torch.zeros_like(mask.full_kv_num_blocks),
                        mask.full_kv_indices, mask.q_num_blocks, mask.q_indices,
                        torch.zeros_like(mask.full_q_num_blocks), mask.full_q_indices,
                        BLOCK_SIZE=mask.BLOCK_SIZE, mask_mod=mask.mask_mod)
    wrong = _compiled_flex_attention()(q, k, v, block_mask=no_full, scale=0.3, enable_gqa=True).transpose(1, 2)
    assert (wrong.double() - exact).abs().max() > 1e-2


PEAK_CHILD = r"""
import json, random, sys
import torch
from golong.trainer.attention import prompt_once_block_mask

# a 131,072-token row: units of an 8,192-token prompt and 16 responses of 768-2,304 tokens (the last cut short)
rng = random.Random(0)
cu, segments = [0], [0]
while cu[-1] < 131072:
    segments.append(segments[-1] + 8192)
    for _ in range(16):
        segments.append(min(131072, segments[-1] + rng.randint(768, 2304)))
    cu.append(segments[-1])
cu, segments = torch.tensor(cu, dtype=torch.int32), torch.tensor(segments, dtype=torch.int32)
status_kib = lambda key: int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # Linux: resets the peak (VmHWM) to what is resident now
before = status_kib("VmRSS")
mask = prompt_once_block_mask(cu, segments, 131072)
peak = status_kib("VmHWM") - before
print(json.dumps({"peak_kib": peak, "tiles": mask.kv_num_blocks.sum().item() + mask.full_kv_num_blocks.sum().item(),
                  "full": mask.full_kv_num_blocks.sum().item()}))
"""


def test_block_mask_memory_at_131k_tokens_is_bounded():
    """Peak memory of building the mask of a 131,072-token row, in a fresh process (the peak resident
    set, Linux VmHWM reset just before, sees torch's allocations): under 1 GiB. Fails before the fix: the
    old `create_block_mask` path evaluated the mask_mod on all T^2 pairs (bench/block_mask.py: 2.5 GiB at
    16K tokens, ~10 bytes a pair: ~160 GiB here)."""
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_kib"] < 1024 * 1024, result
    # the prompt triangles and response x prompt rectangles alone are ~60K full 128 x 128 tiles
    assert 50_000 < result["full"] < result["tiles"] < 1024 * 1024 // 4
