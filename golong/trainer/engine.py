"""The policy under DeepSpeed: ZeRO-3 sharded model, AdamW, packed micro-batches, the policy loss.

One `PolicyEngine` per process (torchrun rank, or a single process as world size 1). A step:

    denom = LossDenominator.build(samples, agg_mode)                   # once, all ranks
    mbs = [pack([samples[i] for i in mb]) for mb in plan[rank]]        # same count on every rank
    for mb in mbs: mb.old_logprobs = engine.old_logprobs(mb)           # optional, see forward_backward
    stats = sum((engine.forward_backward(mb, denom) for mb in mbs), PolicyLossStats())
    step_stats = engine.optimizer_step()

The model is built sharded from the start: `HfDeepSpeedConfig` is created before `from_pretrained`,
so transformers loads it under `deepspeed.zero.Init` and no rank ever holds all of a large model.
"""
from __future__ import annotations

import copy
import functools
import gc
import os
import resource
import time
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import set_z3_leaf_modules
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from golong.trainer.attention import packed_attention_kwargs, resolve_attention
from golong.trainer.batch import PackedMicroBatch
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.logprobs import token_logprobs
from golong.trainer.loss import LossDenominator, PolicyLossStats, policy_loss
from golong.trainer.router_replay import RouterReplay
from golong.trainer.router_replay import forward_kwargs as replay_kwargs


@dataclass
class StepStats:
    """What one optimizer step did, on this rank (grad_norm and lr are global)."""

    grad_norm: float  # global gradient norm before clipping
    lr: float  # learning rate this update used
    tokens: int  # tokens forward_backward computed since the last step, fillers included
    packing_efficiency: float  # real tokens / computed tokens
    tokens_per_s: float  # computed tokens / seconds spent in forward_backward and optimizer_step
    peak_memory_gib: float  # CUDA: peak allocated this step; CPU: the process's peak RSS so far


class LogProbModel(nn.Module):
    """A causal LM whose forward returns the log-probs of the response tokens of a packed row.

    Only the hidden states at `logit_positions` go through the LM head, chunk by chunk
    (`token_logprobs`), so neither prompt logits nor [tokens x vocab] ever exist.
    """

    def __init__(self, model: nn.Module, temperature: float, chunk_size: int):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.router_replay = RouterReplay.install(model)  # MoE models: hooks that replay `routes`; else None

    def forward(self, input_ids, position_ids, cu_seqlens, max_seqlen, logit_positions, labels, with_entropy=False,
                routes=None):
        hidden = self.model.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False,
            **packed_attention_kwargs(cu_seqlens, max_seqlen),
            **replay_kwargs(self.router_replay, routes, cu_seqlens)).last_hidden_state  # (1, T, H)
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
    if cfg.offload_optimizer and training:  # ZeRO-Offload insists on its own CPU Adam (a JIT-built op)
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.lr, "betas": list(cfg.adam_betas), "weight_decay": cfg.weight_decay}}
    return _deep_merge(config, cfg.deepspeed)


def warmup_then_constant(warmup_steps: int):
    """LR factor of update k = 1, 2, ...: k / warmup_steps during warm-up, then 1 (Table 12: 5 steps).
    The first update already moves (factor 1/warmup), unlike schedules that start at 0."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def _init_distributed(backend: str) -> None:
    """Join torchrun's process group, or make a world of one for a single process."""
    if not dist.is_initialized():
        if "RANK" in os.environ:
            dist.init_process_group(backend)
        else:
            for name in ("RANK", "LOCAL_RANK"):  # DeepSpeed reads them (zero.Init, engine) even alone
                os.environ[name] = "0"
            os.environ["WORLD_SIZE"] = "1"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)


class PolicyEngine:
    """The trained policy: a DeepSpeed engine around the HF model, fed packed micro-batches."""

    def __init__(self, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, loss_cfg: PolicyLossConfig,
                 icepop_cfg: IcePopConfig, temperature: float):
        self.loss_cfg, self.icepop_cfg = loss_cfg, icepop_cfg
        self.device = torch.device("cpu")
        if get_accelerator().device_name() == "cuda":  # one GPU per process, picked by torchrun's LOCAL_RANK
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        _init_distributed("nccl" if self.device.type == "cuda" else "gloo")
        if model_cfg.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, model_cfg.dtype)
        torch.manual_seed(trainer_cfg.seed)

        ds_config = deepspeed_config(trainer_cfg, dtype)
        self.module, self._hf_ds_config = self._load_model(model_cfg, ds_config, dtype)
        if model_cfg.gradient_checkpointing:
            self.module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.module.train()  # layers checkpoint only in training mode; from_pretrained returns eval mode
        wrapper = self._wrap(self.module, ds_config, temperature, trainer_cfg.logprob_chunk_size)

        optimizer = scheduler = None
        if "optimizer" not in ds_config:  # torch AdamW: no JIT-built op, accepted by ZeRO as a client optimizer
            optimizer = torch.optim.AdamW(self.module.parameters(), lr=trainer_cfg.lr,
                                          betas=tuple(trainer_cfg.adam_betas), weight_decay=trainer_cfg.weight_decay)
        if "scheduler" not in ds_config:  # DeepSpeed calls it with the optimizer it wraps
            scheduler = functools.partial(torch.optim.lr_scheduler.LambdaLR,
                                          lr_lambda=warmup_then_constant(trainer_cfg.warmup_steps))
        self.ds_engine, *_ = deepspeed.initialize(model=wrapper, optimizer=optimizer, lr_scheduler=scheduler,
                                                  config=ds_config)
        self.dp_world_size = self.ds_engine.dp_world_size

        self.ref_engine = self._hf_ref_ds_config = None
        if loss_cfg.kl_coef:  # a frozen copy of the initial policy, sharded the same way, no optimizer
            ref_config = deepspeed_config(trainer_cfg, dtype, training=False)
            ref_model, self._hf_ref_ds_config = self._load_model(model_cfg, ref_config, dtype)
            ref_model.requires_grad_(False)
            self.ref_engine, *_ = deepspeed.initialize(
                model=self._wrap(ref_model, ref_config, temperature, trainer_cfg.logprob_chunk_size), config=ref_config)
            self.ref_engine.eval()
        self._reset_step_counters()

    def _load_model(self, model_cfg: ModelConfig, ds_config: dict, dtype: torch.dtype):
        # Under ZeRO-3 transformers reads this (kept alive) config and builds the model inside
        # deepspeed.zero.Init, loading each rank's shard only (ENVIRONMENT.md: wrapping
        # from_pretrained in zero.Init by hand fails in transformers 5).
        hf_ds_config = HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
        model = AutoModelForCausalLM.from_pretrained(
            model_cfg.path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
            attn_implementation=resolve_attention(model_cfg.attention, self.device))
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
                    max_seqlen=mb.max_seqlen, logit_positions=mb.logit_positions, labels=mb.labels,
                    routes=mb.routes)

    @torch.no_grad()
    def old_logprobs(self, mb: PackedMicroBatch) -> torch.Tensor:
        """(R,) fp32 log-probs of the response tokens under the current weights, no gradient."""
        return self.ds_engine(**self._inputs(mb.to(self.device)))

    @torch.no_grad()
    def ref_logprobs(self, mb: PackedMicroBatch) -> torch.Tensor:
        """(R,) fp32 log-probs under the frozen initial policy (only when loss.kl_coef > 0)."""
        if self.ref_engine is None:
            raise RuntimeError("no reference model: it is built only when loss.kl_coef > 0")
        return self.ref_engine(**self._inputs(mb.to(self.device)))

    def forward_backward(self, mb: PackedMicroBatch, denom: LossDenominator) -> PolicyLossStats:
        """Forward and backward of one micro-batch; gradients accumulate until `optimizer_step`.

        Without `mb.old_logprobs` the current log-probs (detached) stand in for them: exact when no
        optimizer step has happened since the rollout (one update per batch, Table 12's PPO epochs = 1),
        and it saves a forward pass.
        """
        start = time.perf_counter()
        mb = mb.to(self.device)
        logp, entropy = self.ds_engine(**self._inputs(mb), with_entropy=True)
        old_logp = mb.old_logprobs if mb.old_logprobs is not None else logp.detach()
        loss, stats = policy_loss(logp, old_logp, mb.rollout_logprobs, mb.advantages, mb.loss_mask, mb.seq_index,
                                  self.loss_cfg, self.icepop_cfg, denom, entropy=entropy, ref_logp=mb.ref_logprobs)
        # `loss` is this micro-batch's share of the step's loss (a sum over the step divided by the
        # step-wide denominator). DeepSpeed averages gradients over the data-parallel ranks, so scale
        # by their number to get the sum; scale_wrt_gas=False keeps it from dividing by accumulation steps.
        self.ds_engine.backward(loss * self.dp_world_size, scale_wrt_gas=False)
        self._tokens += mb.num_tokens
        self._real_tokens += mb.num_real_tokens
        self._busy_s += time.perf_counter() - start
        return stats

    def optimizer_step(self) -> StepStats:
        """Clip, apply AdamW to the accumulated gradients, advance the LR schedule."""
        start = time.perf_counter()
        lr = self.ds_engine.get_lr()[0]
        self.ds_engine.step()
        grad_norm = self.ds_engine.get_global_grad_norm()
        self._busy_s += time.perf_counter() - start
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stats = StepStats(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"), lr=lr,
                          tokens=self._tokens, packing_efficiency=self._real_tokens / max(self._tokens, 1),
                          tokens_per_s=self._tokens / max(self._busy_s, 1e-9), peak_memory_gib=peak / 2**30)
        self._reset_step_counters()
        return stats

    def _reset_step_counters(self) -> None:
        self._tokens = self._real_tokens = 0
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
