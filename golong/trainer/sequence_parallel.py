"""Sequence parallelism (Ulysses, through DeepSpeed's ALST): one packed row trained by an SP group of ranks.

`trainer.sequence_parallel_size = sp` groups consecutive ranks (0..sp-1, sp..2sp-1, ...). Every rank
of a group receives the same micro-batches; each holds 1/sp of every row's tokens through the whole
decoder, and attention runs over the whole row with the heads split: DeepSpeed 0.19.8's
`UlyssesSPAttentionHF` wraps golong's own attention function (an all-to-all turns
[T/sp tokens x all heads] into [T tokens x heads/sp], the inner attention runs, a second all-to-all
turns it back). Golong uses from ALST:

- `UlyssesSPAttentionHF.register_with_transformers`: the all-to-all wrapper, installed in place of
  golong's attention key in transformers' registry, and its `mpu` (parallel_state_sp), which
  `deepspeed.initialize(mpu=...)` reads: ZeRO-3 shards parameters over all sp x dp ranks.
- Its KV-head replication: with fewer KV heads than sp, each rank gets one KV head repeated.

Golong writes itself (and why ALST's pieces do not fit):

- `pad_inputs` + `shard_inputs` instead of `UlyssesSPDataLoaderAdapter`: the adapter takes one dataloader
  batch per rank and round-robins them, splits shifted labels as tensors over the row, and demands
  a row length divisible by sp. Golong's micro-batches are planned per SP group (all ranks of a group
  already hold the same `PackedMicroBatch`), only response tokens have labels (`logit_positions`),
  and rows of any length are padded here.
- The whole row's attention kwargs pass through the wrapper unchanged (the wrapper forwards `**kwargs`
  to the inner attention and only all-gathers `position_ids`), so the inner attention sees the row's
  boundaries in row coordinates. Whatever kwargs describe the row reach it as they are.
- The policy loss needs per-token log-probs of whole responses (seq-mean-token-mean divides by a
  response's length, IcePop's veto looks at all of a response's tokens), and a response can straddle
  a shard edge. `gather_response_values` therefore gives every rank of the group the full (R,)
  vector: the rank's own tokens live (with gradient), the others' as constants. Every rank computes
  the same loss value, and its backward reaches only its own tokens, so the SP group's gradients add
  up to exactly one micro-batch's gradient. Statistics are kept on the group's first rank only.

Memory (measured by bench/sequence_parallel.py, figures in bench/RESULTS.md): per rank, everything that
grows with the row halves at sp = 2 (the checkpoints and the final norm kept for the backward, the
forward's and the backward's peaks). Ulysses' copies of q, k, v and the attention output are
[T/sp tokens x all heads] or [T tokens x heads/sp], live only while attention runs, and the step
peaks later, in the recomputed layer's MLP backward. With fewer KV heads than sp the repeated KV heads
do not shrink. ALST's memory tools golong does not use:

- `TiledMLP` (the MLP run slice by slice of the row, and recomputed so in the backward) would cut the
  [tokens x intermediate] tensors that make about half of that peak, at any sp. It replaces the HF
  MLP's forward for the whole class and steers ZeRO-3's gradient reduction per slice
  (`ds_grad_is_ready`); the recipes' rows fit at their sp without it. It is the next lever when rows
  outgrow sp.
- `TiledFusedLogitsLoss` / `sequence_tiled_compute`: golong/trainer/logprobs.py says why not; only a
  shard's response tokens reach the LM head there, chunk by chunk.

Gradient scale (DeepSpeed 0.19.8, read in the source): golong wants the reduced gradient to be the
SUM over ranks of each rank's loss share. ZeRO-3 with `reduce_scatter` (the default) reduce-scatters
with `reduce_scatter_coalesced`, which divides by the whole partition group (all sp x dp ranks), with
no sequence-parallel correction; ZeRO-1/2, ZeRO-3 without reduce_scatter (contiguous buckets only)
and the plain engine all-reduce divide by world / sp. `gradient_scale` returns the factor that
undoes the division in use; the equivalence test (tests/test_sequence_parallel.py) checks it.

    layout = ParallelLayout.of(world, sp=cfg.sequence_parallel_size)            # golong/world.py
    plan = plan_micro_batches(lengths, max_tokens, layout.dp_size)[layout.dp_rank]   # same on the group
    shard = shard_inputs(pad_inputs(inputs, sp), layout)   # this rank's 1/sp of the row's forward kwargs
    logp = shard.gather(engine(**shard.inputs)) # (R,) of the whole micro-batch
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from golong.configlib import ConfigError
from golong.world import ParallelLayout

KEY = "trainer.sequence_parallel_size"


# ------------------------------------------------------------------------------------------------
# Heads: which sizes can split a model's attention


def valid_sizes(num_heads: int, num_kv_heads: int, world_size: int | None = None) -> list[int]:
    """SP sizes Ulysses can run: sp divides the query heads, and the KV heads divide by sp or sp by
    them (fewer KV heads than sp are repeated). With `world_size`, only sizes that divide it."""
    limit = world_size or num_heads
    return [s for s in range(1, limit + 1)
            if num_heads % s == 0 and (num_kv_heads % s == 0 or s % num_kv_heads == 0)
            and (world_size is None or world_size % s == 0)]


def check_heads(num_heads: int, num_kv_heads: int, sp: int) -> None:
    """Refuse an SP size that cannot split the model's heads (a ConfigError naming the key and the valid sizes)."""
    if sp == 1:
        return
    if sp not in valid_sizes(num_heads, num_kv_heads):
        raise ConfigError(
            f"{KEY}: {sp} cannot split the model's attention ({num_heads} query heads, {num_kv_heads} KV heads): "
            f"Ulysses needs the query heads divisible by it and the KV heads divisible by it or dividing it. "
            f"Fix: use one of {valid_sizes(num_heads, num_kv_heads)}.")


def model_heads(model_path: str, trust_remote_code: bool = False) -> tuple[int, int]:
    """(query heads, KV heads) from the model's config (no weights are read)."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code).get_text_config()
    return text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def check_model_heads(model_path: str, sp: int, trust_remote_code: bool = False) -> None:
    """`check_heads` on the model at `model_path`; a no-op for sp = 1."""
    if sp > 1:
        check_heads(*model_heads(model_path, trust_remote_code), sp)


# ------------------------------------------------------------------------------------------------
# Ranks: SP groups and data placement


# The layout of SP groups (consecutive ranks, ALST's grouping) is golong.world.ParallelLayout's: sp, sp_rank,
# dp_size, dp_rank, counts_once, and sp_group once register_ulysses has built the groups.


# ------------------------------------------------------------------------------------------------
# DeepSpeed: the Ulysses wrapper, its mpu, the gradient scale

_registered: dict[str, int] = {}  # attention implementation -> sp, wrapped once per process


def register_ulysses(model, attn_implementation: str, sp: int):
    """Wrap `attn_implementation` (golong's, already in transformers' registry and the model's config)
    with ALST's Ulysses all-to-all, and build the SP groups. Returns DeepSpeed's mpu for
    `deepspeed.initialize(mpu=...)`. Every rank must call it (it creates process groups).

    ALST replaces the registry entry in place, for the whole process: a second engine in the same
    process (the reference model) shares the wrapper, and a different sp in one process is refused.
    """
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    if _registered.get(attn_implementation) == sp:
        return parallel_state_sp
    if _registered:
        raise RuntimeError(f"sequence parallelism is already set up in this process for {_registered}; "
                           f"one process trains with one {KEY}")
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model, core_attn_implementation=attn_implementation, sequence_parallel_size=sp,
        micro_batch_size=1,  # one packed row per micro-batch
        seq_length_is_variable=True)  # rows have any length (a multiple of sp after padding)
    _registered[attn_implementation] = sp
    return mpu


def gradient_scale(ds_config: dict, world_size: int, sp: int) -> float:
    """The factor golong multiplies each rank's loss share by so that DeepSpeed 0.19.8's gradient
    reduction yields the sum over ranks (see the module docstring for what it divides by)."""
    zero = ds_config.get("zero_optimization", {})
    if sp == 1 or (zero.get("stage", 0) == 3 and zero.get("reduce_scatter", True)):
        return float(world_size)  # reduce_scatter_coalesced divides by all sp x dp ranks
    if zero.get("stage", 0) == 3:  # contiguous buckets divide by world / sp, oversized ones by world
        raise ValueError("sequence parallelism needs ZeRO-3's reduce_scatter (TrainerConfig.validate says how)")
    return float(world_size // sp)  # ZeRO-1/2 and the engine's all-reduce divide by world / sp


# ------------------------------------------------------------------------------------------------
# Rows: padding, sharding, and gathering the per-token results


@dataclass
class ShardedMicroBatch:
    """This rank's 1/sp of a packed micro-batch's row. R = response tokens of the whole micro-batch."""

    inputs: dict  # LogProbModel's forward kwargs: this shard's tokens, the whole row's attention kwargs
    owned: torch.Tensor  # (R,) bool: which response tokens this shard predicts
    row_tokens: int  # tokens of the padded row (a multiple of sp)
    group: object  # the SP process group

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        return gather_response_values(values, self.owned, self.group)


ROW_KEYS = ("input_ids", "position_ids")  # (1, T) tensors split along the row
ROUTE_KEYS = ("routes", "routes_counted")  # (T, ...) per row token (MoE router replay), split along the row
RESPONSE_KEYS = ("logit_positions", "labels")  # (R,) per response token, selected by predicting position


def pad_inputs(inputs: dict, multiple: int) -> dict:
    """The forward kwargs of a packed row (1, T) padded to a multiple of `multiple` tokens: the row's
    LAST sequence grows by filler tokens (id 0, positions continuing). Attention is causal, so no
    real token attends to a filler, and fillers have no logit positions: the real tokens' results are
    unchanged. This is the one function that knows the packing layout's boundary kwargs
    (`cu_seqlens`, `max_seqlen`, and prompt-once's `cu_segments`: the fillers join the row's last
    segment, a response or a lone prompt, both causal)."""
    pad = -inputs["input_ids"].shape[1] % multiple
    if not pad:
        return inputs
    cu_seqlens, position_ids = inputs["cu_seqlens"].clone(), inputs["position_ids"]
    last_len = int(cu_seqlens[-1] - cu_seqlens[-2]) + pad
    cu_seqlens[-1] += pad
    fill_positions = position_ids[:, -1:] + 1 + torch.arange(pad, device=position_ids.device)[None]
    padded = {**inputs, "input_ids": torch.cat([inputs["input_ids"], inputs["input_ids"].new_zeros(1, pad)], dim=1),
              "position_ids": torch.cat([position_ids, fill_positions], dim=1),
              "cu_seqlens": cu_seqlens, "max_seqlen": max(inputs["max_seqlen"], last_len)}
    if inputs.get("cu_segments") is not None:
        cu_segments = inputs["cu_segments"].clone()
        cu_segments[-1] += pad
        padded["cu_segments"] = cu_segments
    if inputs.get("routes") is not None:  # router replay: fillers get placeholder experts, never counted
        from golong.replay.trainer import unrouted_placeholder

        padded["routes"] = torch.cat([inputs["routes"], unrouted_placeholder(inputs["routes"], pad)])
        padded["routes_counted"] = torch.cat([inputs["routes_counted"], inputs["routes_counted"].new_zeros(pad)])
    return padded


def shard_inputs(inputs: dict, layout: ParallelLayout) -> ShardedMicroBatch:
    """Shard `layout.sp_rank` of a packed row's forward kwargs (the same on every rank of the SP group,
    the row a multiple of sp tokens long, see `pad_inputs`):

    - ROW_KEYS (and ROUTE_KEYS, MoE router replay's per-token routes): this shard's T/sp consecutive tokens
      (the MoE layers run on the shard's own tokens, outside the attention's all-to-all);
    - RESPONSE_KEYS: the response tokens whose predicting position lies in the shard, logit positions
      shifted into it; labels come from the full row, so a response token whose predicting position
      is the shard's last one has its label although the token itself sits in the next shard;
    - every other key (the row's attention boundaries, whatever the layout passes) unchanged: the
      attention sees the whole row after Ulysses' all-to-all, in row coordinates.
    """
    row = inputs["input_ids"].shape[1]
    if row % layout.sp:
        raise ValueError(f"a row of {row} tokens does not split into {layout.sp} shards: pad it first (pad_inputs)")
    width = row // layout.sp
    start = layout.sp_rank * width
    positions = inputs["logit_positions"]
    owned = (positions >= start) & (positions < start + width)  # (R,)
    shard = {**inputs, **{k: inputs[k][:, start:start + width] for k in ROW_KEYS},
             **{k: inputs[k][start:start + width] for k in ROUTE_KEYS if inputs.get(k) is not None},
             **{k: inputs[k][owned] for k in RESPONSE_KEYS}}
    shard["logit_positions"] = shard["logit_positions"] - start
    return ShardedMicroBatch(inputs=shard, owned=owned, row_tokens=row, group=layout.sp_group)


def gather_response_values(values: torch.Tensor, owned: torch.Tensor, group) -> torch.Tensor:
    """(R_own,) per-token values of this shard -> (R,) of the whole micro-batch on every rank of the
    SP group: this rank's entries keep their autograd graph, the other ranks' arrive as constants
    (one all-reduce of R floats). A loss computed from the result on every rank back-propagates into
    each rank's own tokens only, so the group's gradients add up to the micro-batch's once."""
    mine = values.new_zeros(owned.shape).masked_scatter(owned, values)  # differentiable in `values`
    everyone = mine.detach().clone()
    dist.all_reduce(everyone, group=group)  # each token is owned by exactly one rank of the group
    return torch.where(owned, mine, everyone)


# CUDA-only parts: nothing in this module branches on the device. On CUDA, DeepSpeed's all-to-all
# (`deepspeed.sequence.layer._dim_zero_all_to_all`) and `gather_response_values`' all-reduce run over
# NCCL, and the wrapped inner attention is the CUDA branch of `attention.resolve_attention`
# (flash-attn varlen or torch varlen), fed the whole row's `cu_seq_lens_*`. Those paths are written
# but unverified: only gloo on CPU with `golong_per_sequence` was run.
