"""The policy under DeepSpeed: ZeRO-3 sharded model, AdamW, packed micro-batches, the policy loss.

One `PolicyEngine` per process (torchrun rank, or a single process as world size 1). A step:

    batch = plan_step(groups, engine.layout, max_tokens, share_prompt)       # same count on every rank (packing.py)
    denom = LossDenominator.build(batch.counted, agg_mode, world=world)          # once, all ranks
    replay_metrics = engine.prepare_old_logprobs(batch.micro_batches, ppo_epochs=1)  # a pass only where needed
    stats = sum((engine.forward_backward(mb, denom) for mb in batch.micro_batches), PolicyLossStats())
    step_stats = engine.optimizer_step()

The model is built sharded from the start: `HfDeepSpeedConfig` is created before `from_pretrained`,
so transformers loads it under `deepspeed.zero.Init` and no rank ever holds all of a large model.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import logging
import os
import resource
import time
from dataclasses import dataclass

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import set_z3_leaf_modules
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from golong.model_check import model_load_errors
from golong.trainer import sequence_parallel
from golong.trainer.attention import (FLEX_PROMPT_ONCE, PROMPT_ONCE_IMPLEMENTATIONS, one_response_per_unit,
                                      packed_attention_kwargs, prompt_once_block_mask, resolve_attention)
from golong.trainer.batch import PackedMicroBatch
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.logprobs import token_logprobs
from golong.trainer.loss import LossDenominator, LossInputs, PolicyLossStats, loss_stats, policy_loss
from golong.world import ParallelLayout, World, init_world
from golong.replay.trainer import RouterReplay, router_metrics
from golong.replay.trainer import forward_kwargs as replay_kwargs


@dataclass
class StepStats:
    """What one optimizer step did, on this rank (grad_norm and lr are global)."""

    grad_norm: float  # global gradient norm before clipping
    lr: float  # learning rate this update used
    tokens: int  # tokens forward_backward computed since the last step, fillers included (SP: the group's rows)
    packing_efficiency: float  # real tokens / computed tokens
    tokens_per_s: float  # computed tokens / seconds spent in forward_backward and optimizer_step
    peak_memory_gib: float  # CUDA: peak allocated this step; CPU: the process's peak RSS so far
    skipped_steps: int  # 1 when this update was discarded (a loss or the global grad norm not finite), else 0


# Test-only hook: "2,5" makes the loss of micro-batch 0 on rank 1 (rank 0 alone) NaN in updates 2 and 5
# (counted from 1 over the engine's optimizer steps: the training step when ppo_epochs is 1). Read only here.
TEST_NAN_STEPS_ENV = "GOLONG_TEST_NAN_STEPS"


def poisoned_updates(world: World) -> frozenset[int]:
    """The updates whose loss this rank poisons (GOLONG_TEST_NAN_STEPS); empty outside tests."""
    steps = frozenset(int(s) for s in os.environ.get(TEST_NAN_STEPS_ENV, "").split(",") if s.strip())
    return steps if world.rank == min(1, world.size - 1) else frozenset()


def nan_poisoned(loss: torch.Tensor) -> torch.Tensor:
    """`loss`, made to carry NaN into every gradient it reaches when it is not finite itself.

    A non-finite loss does not always give non-finite gradients (a NaN added to a finite term leaves
    that term's gradient finite). Multiplying by NaN when the loss is not finite does: d(c * loss) = c * d(loss).
    DeepSpeed's ZeRO optimizers (and its bf16 optimizer) then see a non-finite global gradient norm,
    all-reduced over the ranks, and discard the update on every rank: weights, Adam moments and the LR
    schedule untouched (`was_step_applied()` is False). No device-host sync: the test runs on the device.
    """
    return loss * torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))


class LogProbModel(nn.Module):
    """A causal LM whose forward returns the log-probs of the response tokens of a packed row.

    The row's layout (prompt-once units, golong/trainer/batch.py) reaches every attention call as the
    kwargs of `packed_attention_kwargs`; for flex attention the block mask is built here, once per
    forward, not once per layer. Only the hidden states at `logit_positions` go through the LM head,
    chunk by chunk (`token_logprobs`), so neither prompt logits nor [tokens x vocab] ever exist.
    """

    def __init__(self, model: nn.Module, temperature: float, chunk_size: int):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.router_replay = RouterReplay.install(model)  # MoE models: hooks that replay `routes`; else None

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, cu_segments, logit_positions, labels,
                with_entropy=False, routes=None, routes_counted=None):
        implementation = self.model.config._attn_implementation
        if implementation not in PROMPT_ONCE_IMPLEMENTATIONS and not one_response_per_unit(cu_seqlens, cu_segments):
            raise ValueError(f"attention {implementation!r} cannot attend prompt-once groups (trainer.share_prompt): "
                             "use model.attention=auto, flex or per_sequence, or trainer.share_prompt=false")
        attention = packed_attention_kwargs(cu_seqlens, max_seqlen, cu_segments)
        if implementation == FLEX_PROMPT_ONCE:
            # over the whole row (cu_seqlens[-1] tokens), even where a sequence-parallel rank holds a slice of it
            attention["segment_block_mask"] = prompt_once_block_mask(cu_seqlens, cu_segments, int(cu_seqlens[-1]))
        hidden = self.model.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, **attention,
            **replay_kwargs(self.router_replay, routes, routes_counted)).last_hidden_state  # (1, T, H)
        head = self.model.get_output_embeddings().weight  # (V, H)
        return token_logprobs(hidden[0, logit_positions], head, labels, temperature=self.temperature,
                              chunk_size=self.chunk_size, with_entropy=with_entropy)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def deepspeed_config(cfg: TrainerConfig, dtype: torch.dtype, *, training: bool = True) -> dict:
    """golong's DeepSpeed config; `cfg.deepspeed` (raw, for experts) is merged over it last."""
    pin = get_accelerator().device_name() == "cuda"
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer and training:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    config = {
        "train_micro_batch_size_per_gpu": 1,  # one packed row per micro-batch
        "gradient_accumulation_steps": 1,
        # a step has as many micro-batches as packing gives it: the caller owns the step boundary
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.sequence_parallel_size > 1:  # [SP] read by HfDeepSpeedConfig's zero.Init (batch-size arithmetic)
        config["sequence_parallel_size"] = cfg.sequence_parallel_size
    return _deep_merge(config, cfg.deepspeed)


def is_norm_or_bias(name: str, param: nn.Parameter) -> bool:
    """Megatron's no-weight-decay rule: biases and every 1-D parameter (RMSNorm/LayerNorm weights).
    Under ZeRO-3 a parameter's own tensor is a flat shard; `ds_shape` is its full shape."""
    return name.endswith(".bias") or len(getattr(param, "ds_shape", param.shape)) == 1


def adamw_param_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool) -> list[dict]:
    """AdamW parameter groups: matrices and embeddings get `weight_decay`; norm weights and biases get 0
    unless `decay_norms_and_biases` (trainer.weight_decay_norms_and_biases). Empty groups are left out."""
    decayed, exempt = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (exempt if is_norm_or_bias(name, param) and not decay_norms_and_biases else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainerConfig, ds_config: dict):
    """The client optimizer DeepSpeed wraps, or None when the raw config names its own (trainer.deepspeed.optimizer;
    validation refuses that unless norms and biases are decayed too, since DeepSpeed would put all in one group).
    ZeRO-Offload needs DeepSpeed's CPU Adam (a JIT-built op); otherwise torch AdamW (no JIT-built op)."""
    if "optimizer" in ds_config:
        return None
    groups = adamw_param_groups(model, cfg.weight_decay, cfg.weight_decay_norms_and_biases)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def warmup_then_constant(warmup_steps: int):
    """LR factor of update k = 1, 2, ...: k / warmup_steps during warm-up, then 1 (Table 12: 5 steps).
    The first update already moves (factor 1/warmup), unlike schedules that start at 0."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


logger = logging.getLogger("golong")


class PolicyEngine:
    """The trained policy: a DeepSpeed engine around the HF model, fed packed micro-batches."""

    def __init__(self, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, loss_cfg: PolicyLossConfig,
                 icepop_cfg: IcePopConfig, temperature: float, world: World | None = None,
                 layout: ParallelLayout | None = None):
        self.loss_cfg, self.icepop_cfg = loss_cfg, icepop_cfg
        self.world = world or init_world()  # DeepSpeed needs a process group, even in a world of one
        sp = trainer_cfg.sequence_parallel_size
        self.layout = ParallelLayout.for_component(layout, self.world, sp=sp)  # the run's (golong/world.py)
        self.share_prompt = trainer_cfg.share_prompt
        self.device = torch.device("cpu")
        if get_accelerator().device_name() == "cuda":  # one GPU per process, picked by torchrun's LOCAL_RANK
            self.device = torch.device("cuda", self.world.local_rank)
        # DeepSpeed's init JIT-compiles a shared-memory all-reduce op on CPU (minutes when its build cache is
        # cold); only its AutoTP inference layers use it (inference_all_reduce), never ZeRO training.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=self.world.backend)  # adopts the world's process group
        if model_cfg.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, model_cfg.dtype)
        torch.manual_seed(trainer_cfg.seed)
        sequence_parallel.check_model_heads(model_cfg.path, sp, model_cfg.trust_remote_code)  # [SP] before any weight loads

        ds_config = deepspeed_config(trainer_cfg, dtype)
        self.module, self._hf_ds_config = self._load_model(model_cfg, ds_config, dtype)
        mpu = None
        if sp > 1:  # [SP] ALST's Ulysses wrapper around golong's attention, and its SP/DP groups
            mpu = sequence_parallel.register_ulysses(self.module, self.module.config._attn_implementation, sp)
            self.layout = dataclasses.replace(self.layout, sp_group=mpu.get_sequence_parallel_group())
        if model_cfg.gradient_checkpointing:
            self.module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.module.train()  # layers checkpoint only in training mode; from_pretrained returns eval mode
        wrapper = self._wrap(self.module, ds_config, temperature, trainer_cfg.logprob_chunk_size)

        optimizer = build_optimizer(self.module, trainer_cfg, ds_config)
        scheduler = None
        if "scheduler" not in ds_config:  # DeepSpeed calls it with the optimizer it wraps
            scheduler = functools.partial(torch.optim.lr_scheduler.LambdaLR,
                                          lr_lambda=warmup_then_constant(trainer_cfg.warmup_steps))
        self.ds_engine, *_ = deepspeed.initialize(model=wrapper, optimizer=optimizer, lr_scheduler=scheduler,
                                                  config=ds_config, mpu=mpu)
        self.grad_scale = sequence_parallel.gradient_scale(ds_config, self.world.size, sp)  # [SP]

        self.ref_engine = self._hf_ref_ds_config = None
        if loss_cfg.kl_coef:  # a frozen copy of the initial policy, sharded the same way, no optimizer
            ref_config = deepspeed_config(trainer_cfg, dtype, training=False)
            ref_model, self._hf_ref_ds_config = self._load_model(model_cfg, ref_config, dtype)
            ref_model.requires_grad_(False)
            self.ref_engine, *_ = deepspeed.initialize(
                model=self._wrap(ref_model, ref_config, temperature, trainer_cfg.logprob_chunk_size), config=ref_config,
                mpu=mpu)
            self.ref_engine.eval()
        self._nan_updates = poisoned_updates(self.world)
        self._reset_step_counters()

    def _load_model(self, model_cfg: ModelConfig, ds_config: dict, dtype: torch.dtype):
        # Under ZeRO-3 transformers reads this (kept alive) config and builds the model inside
        # deepspeed.zero.Init, loading each rank's shard only (wrapping
        # from_pretrained in zero.Init ourselves fails in transformers 5).
        hf_ds_config = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
        attention = resolve_attention(model_cfg.attention, self.device, self.share_prompt)
        with model_load_errors(model_cfg.path):  # e.g. a corrupt safetensors file: one line naming model.path
            model = AutoModelForCausalLM.from_pretrained(
                model_cfg.path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code, attn_implementation=attention)
        model.config.use_cache = False
        if model_cfg.zero3_leaf_modules:  # e.g. MoE blocks: gathered whole, not expert by expert
            set_z3_leaf_modules(model, model_cfg.zero3_leaf_modules)
        return model, hf_ds_config

    @staticmethod
    def _wrap(model: nn.Module, ds_config: dict, temperature: float, chunk_size: int) -> LogProbModel:
        wrapper = LogProbModel(model, temperature, chunk_size)
        if ds_config["zero_optimization"]["stage"] == 3:
            # The LM head's weight is used by LogProbModel.forward, outside the head module's own
            # forward: tell ZeRO-3 to gather it for the wrapper's forward and backward.
            deepspeed.zero.register_external_parameter(wrapper, model.get_output_embeddings().weight)
        return wrapper

    def _inputs(self, mb: PackedMicroBatch) -> dict:
        return dict(input_ids=mb.input_ids, position_ids=mb.position_ids, cu_seqlens=mb.cu_seqlens,
                    max_seqlen=mb.max_seqlen, cu_segments=mb.cu_segments, logit_positions=mb.logit_positions,
                    labels=mb.labels, **mb.extras)  # MoE router replay: routes, routes_counted

    def _run(self, engine, mb: PackedMicroBatch, **kwargs):
        """`engine`'s per-token outputs for the whole micro-batch, each (R,). [SP] With sequence
        parallelism this rank runs its shard of the row, and the SP group's results are gathered."""
        if self.layout.sp == 1:
            return engine(**self._inputs(mb), **kwargs)
        shard = sequence_parallel.shard_inputs(sequence_parallel.pad_inputs(self._inputs(mb), self.layout.sp), self.layout)
        out = engine(**shard.inputs, **kwargs)
        return tuple(map(shard.gather, out)) if isinstance(out, tuple) else shard.gather(out)

    @torch.no_grad()
    def old_logprobs(self, mb: PackedMicroBatch) -> torch.Tensor:
        """(R,) fp32 log-probs of the response tokens under the current weights, no gradient."""
        return self._run(self.ds_engine, mb.to(self.device))

    @torch.no_grad()
    def ref_logprobs(self, mb: PackedMicroBatch) -> torch.Tensor:
        """(R,) fp32 log-probs under the frozen initial policy (only when loss.kl_coef > 0)."""
        if self.ref_engine is None:
            raise RuntimeError("no reference model: it is built only when loss.kl_coef > 0")
        return self._run(self.ref_engine, mb.to(self.device))

    def prepare_old_logprobs(self, micro_batches: list[PackedMicroBatch], ppo_epochs: int) -> dict[str, float]:
        """Stage 6: old (and reference) log-probs by a separate no-grad pass, only when the update's first
        forward cannot give them: more than one update per batch, a KL reference, or MoE routes from the
        rollout (that pass is the one rollout/router_agreement is measured on). Otherwise forward_backward
        records its own, detached. Returns the router metrics (collective; {} without MoE routes)."""
        with_routes = any(mb.extras for mb in micro_batches)
        if ppo_epochs > 1 or self.loss_cfg.kl_coef or with_routes:
            for mb in micro_batches:
                mb.old_logprobs = self.old_logprobs(mb)
                if self.loss_cfg.kl_coef:
                    mb.ref_logprobs = self.ref_logprobs(mb)
        return router_metrics(self.ds_engine.module.router_replay, self.world)

    def forward_backward(self, mb: PackedMicroBatch, denom: LossDenominator) -> PolicyLossStats:
        """Forward and backward of one micro-batch; gradients accumulate until `optimizer_step`.

        Without `mb.old_logprobs` the current log-probs (detached) stand in for them: exact when no
        optimizer step has happened since the rollout (one update per batch, Table 12's PPO epochs = 1),
        and it saves the separate old-log-prob pass. They are then recorded as the caller's
        `mb.old_logprobs` (so rollout/logprob_abs_diff and later epochs can read them).
        """
        start = time.perf_counter()
        group_index = denom.group_index(mb.group_ids, mb.loss_mask)  # on the host copy: checked without a device sync
        caller_mb, mb, denom = mb, mb.to(self.device), denom.to(self.device)
        logp, entropy = self._run(self.ds_engine, mb, with_entropy=True)
        if mb.old_logprobs is None:
            caller_mb.old_logprobs = mb.old_logprobs = logp.detach()
        tokens = LossInputs(logp=logp, old_logp=mb.old_logprobs, advantages=mb.advantages, token_mask=mb.loss_mask,
                            seq_index=mb.seq_index, rollout_logp=mb.rollout_logprobs, entropy=entropy,
                            ref_logp=mb.ref_logprobs,
                            group_index=None if group_index is None else group_index.to(self.device))
        loss = contribution = policy_loss(tokens, self.loss_cfg, self.icepop_cfg, denom)
        if self._micro_batches == 0 and self.ds_engine.global_steps + 1 in self._nan_updates:
            loss = loss + float("nan")  # the test hook (TEST_NAN_STEPS_ENV)
        self._micro_batches += 1
        loss = nan_poisoned(loss)  # a non-finite loss discards the whole update, on every rank
        # `loss` is this micro-batch's share of the step's loss (a sum over the step divided by the
        # step-wide denominator). DeepSpeed averages gradients over ranks; `grad_scale` undoes its
        # division so they add up (sequence_parallel.gradient_scale); scale_wrt_gas=False keeps it from
        # dividing by accumulation steps. [SP] every rank of an SP group holds the same loss value, its
        # backward reaching only its own tokens; the statistics are counted on the group's first rank.
        self.ds_engine.backward(loss * self.grad_scale, scale_wrt_gas=False)
        # read after the backward is queued: the statistics' one device-to-host copy waits for it, not the forward
        stats = loss_stats(tokens, contribution, self.loss_cfg, self.icepop_cfg) if self.layout.counts_once else PolicyLossStats()
        self._tokens += mb.num_tokens
        self._real_tokens += mb.num_real_tokens
        self._busy_s += time.perf_counter() - start
        return stats

    def optimizer_step(self) -> StepStats:
        """Clip, apply AdamW to the accumulated gradients, advance the LR schedule; or, when any rank's
        loss or the global gradient norm is not finite, discard the update on every rank (`nan_poisoned`):
        weights, optimizer state and LR schedule stay as they were, and `skipped_steps` is 1."""
        start = time.perf_counter()
        lr = self.ds_engine.get_lr()[0]
        self.ds_engine.step()
        grad_norm = self.ds_engine.get_global_grad_norm()
        skipped = not self.ds_engine.was_step_applied()
        if not skipped and grad_norm is not None and not torch.isfinite(torch.as_tensor(grad_norm)).item():
            # DeepSpeed without a ZeRO optimizer in fp32 applies any gradient: refuse to go on with such weights
            raise RuntimeError(f"DeepSpeed applied an update whose global gradient norm is {grad_norm}: "
                               f"trainer.zero_stage={self.ds_engine.zero_optimization_stage()} in fp32 has no "
                               "overflow check; use zero_stage 1, 2 or 3")
        self._busy_s += time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stats = StepStats(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr,
                          tokens=self._tokens, packing_efficiency=self._real_tokens / max(self._tokens, 1),
                          tokens_per_s=self._tokens / max(self._busy_s, 1e-9), peak_memory_gib=peak / 2**30,
                          skipped_steps=int(skipped))
        self._reset_step_counters()
        return stats

    def _reset_step_counters(self) -> None:
        self._tokens = self._real_tokens = self._micro_batches = 0
        self._busy_s = 0.0

    def close(self) -> None:
        """Free the engines (the process group stays: it belongs to the whole run)."""
        for engine in (self.ds_engine, self.ref_engine):
            if engine is not None:
                engine.destroy()
        self.ds_engine = self.ref_engine = self.module = None
        self._hf_ds_config = self._hf_ref_ds_config = None
        gc.collect()
        get_accelerator().empty_cache()
