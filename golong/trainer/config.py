"""Config of the policy model, the loss, the optimizer and the run (checkpoints, logging)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from golong.advantage.config import AdvantageConfig
from golong.configlib import invalid, option


@dataclass
class ModelConfig:
    path: str = option("", "Local HF model folder (config.json, tokenizer, weights) or hub id of the policy, in the local HF cache or downloaded at start (loaded with transformers).")
    dtype: Literal["auto", "bfloat16", "float32"] = option("auto", "Training dtype; auto is bfloat16 on CUDA and float32 on CPU.")
    attention: Literal["auto", "flex", "flash_attention_2", "torch_varlen", "per_sequence"] = option(
        "auto", "Packed attention: auto picks per_sequence (exact SDPA) on CPU; on CUDA flex (flex_attention) with trainer.share_prompt, else flash-attn varlen (torch varlen without flash-attn).")
    gradient_checkpointing: bool = option(True, "Recompute activations in backward (activation checkpointing).")
    trust_remote_code: bool = option(False, "Allow model code from the model folder (transformers trust_remote_code).")
    zero3_leaf_modules: list[str] = option([], "Module class names gathered whole under ZeRO-3 (MoE blocks, e.g. Qwen3MoeSparseMoeBlock).")

    def validate(self) -> None:
        if not self.path:
            raise invalid("path", "is empty", "set model.path to a local HF folder or a hub id")


@dataclass
class PolicyLossConfig:
    clip_ratio_low: float = option(0.2, "PPO clip: rho is kept above 1 - clip_ratio_low (Table 12: 0.2).")
    clip_ratio_high: float = option(0.28, "Clip-higher: rho is kept below 1 + clip_ratio_high (Table 12: 0.28).")
    dual_clip_c: float = option(3.0, "Dual clip for negative advantages: the loss is at most c * |A| (Table 12: 3.0); 0 turns it off.")
    agg_mode: Literal["auto", "group-token-mean", "token-mean", "seq-mean-token-mean", "constant-norm"] = option(
        "auto", "Loss aggregation. group-token-mean: Eq. 4, each prompt group's token losses over its G responses' "
        "tokens, then the mean over groups; token-mean: DAPO, all tokens of the step over their count; "
        "seq-mean-token-mean: mean over responses of each response's token mean; constant-norm: Dr.GRPO's Eq. 3. "
        "auto uses the estimator's preference (constant-norm for dr_grpo), else token-mean.")
    constant_norm_length: int = option(0, "Dr.GRPO's constant L (Eq. 3); 0 means rollout.max_response_length.")
    kl_coef: float = option(0.0, "Weight of the k3 KL to the initial (reference) policy; 0 keeps no reference model.")
    entropy_coef: float = option(0.0, "Entropy bonus weight (0 by default).")

    def validate(self) -> None:
        if not 0 <= self.clip_ratio_low < 1:
            raise invalid("clip_ratio_low", f"must be in [0, 1), got {self.clip_ratio_low}", "use 0.2")
        if self.clip_ratio_high < 0:
            raise invalid("clip_ratio_high", f"must be >= 0, got {self.clip_ratio_high}", "use 0.28")
        if self.dual_clip_c != 0 and self.dual_clip_c <= 1:
            raise invalid("dual_clip_c", f"must be > 1 (or 0 to disable), got {self.dual_clip_c}", "use 3.0")


@dataclass
class IcePopConfig:
    mode: Literal["off", "mask", "truncate"] = option(
        "mask", "Rollout/trainer mismatch correction; Table 12's 'clip' mode is read as IcePop masking outside [low, high].")
    low: float = option(0.5, "mask: tokens whose trainer/rollout ratio is below this leave the loss (Table 12: 0.5).")
    high: float = option(5.0, "mask: tokens above this leave the loss; truncate: ratios are capped here (Table 12: 5.0).")
    veto: float = option(1e-4, "A response with any token ratio below this is dropped whole (Table 12: 1e-4); 0 turns it off.")

    def validate(self) -> None:
        if not 0 <= self.low < 1 < self.high:
            raise invalid("low/high", f"need 0 <= low < 1 < high, got low={self.low} high={self.high}", "use 0.5 and 5.0")


@dataclass
class DynamicSamplingConfig:
    enabled: bool = option(False, "Dynamic sampling (DAPO): drop groups whose rewards all agree and generate more rounds until data.prompts_per_step groups with differing rewards exist (the released GoLongRL scripts: on).")
    prompts_per_round: int = option(0, "Prompts drawn per generation round; 0 means data.prompts_per_step (the released scripts: 512).")
    max_rounds: int = option(32, "Most generation rounds per step; when reached, the step trains on the groups found so far, with a warning (the released scripts: 32).")

    def validate(self) -> None:
        if self.prompts_per_round < 0:
            raise invalid("prompts_per_round", f"must be >= 0, got {self.prompts_per_round}",
                          "use 0 (data.prompts_per_step) or a number of prompts such as 512")
        if self.max_rounds < 1:
            raise invalid("max_rounds", f"must be at least 1, got {self.max_rounds}", "use 32")


@dataclass
class AlgorithmConfig:
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig, metadata={"doc": "Advantage estimator."})
    loss: PolicyLossConfig = field(default_factory=PolicyLossConfig, metadata={"doc": "Policy loss."})
    icepop: IcePopConfig = field(default_factory=IcePopConfig, metadata={"doc": "IcePop correction."})
    ppo_epochs: int = option(1, "Passes over each step's rollouts (Table 12: 1, strictly on-policy).")
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig,
                                                    metadata={"doc": "Dynamic sampling (group filtering)."})

    def validate(self) -> None:
        if self.ppo_epochs < 1:
            raise invalid("ppo_epochs", f"must be at least 1, got {self.ppo_epochs}", "use 1")


@dataclass
class TrainerConfig:
    total_steps: int = option(0, "Training steps; 0 runs total_epochs passes over the data (with dynamic sampling a step consumes one or more rounds of prompts).")
    total_epochs: int = option(1, "Passes over the dataset when total_steps is 0: the run ends once the prompts drawn cover it this many times (Table 12: 10).")
    output_dir: str = option("runs/golong", "Run folder: resolved config, metrics.jsonl, checkpoints, plots, hf/.")
    save_every: int = option(0, "Save a checkpoint every this many steps (0: only at the end).")
    keep_last: int = option(2, "Checkpoints kept; older ones are deleted after a new one is complete.")
    resume: bool = option(True, "Resume from the latest complete checkpoint in output_dir; false refuses a folder holding checkpoints.")
    export_hf: bool = option(True, "Write an HF-format model (safetensors, config, tokenizer) to output_dir/hf at the end.")
    seed: int = option(1, "Seed of the trainer's torch generator, set once both engines have started (sampling: rollout.seed).")
    lr: float = option(2e-6, "AdamW learning rate (Table 12: 2e-6).")
    weight_decay: float = option(0.1, "AdamW weight decay (Table 12: 0.1) of the weight matrices and embeddings.")
    weight_decay_norms_and_biases: bool = option(
        False, "Also decay norm weights and biases (1-D parameters); false exempts them, as Megatron (the released scripts) does.")
    adam_betas: list[float] = option([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = option(5, "Linear warm-up steps, then constant (Table 12: 5).")
    grad_clip: float = option(1.0, "Gradient-norm clipping (Table 12: 1.0).")
    zero_stage: Literal[0, 1, 2, 3] = option(3, "DeepSpeed ZeRO stage.")
    offload_optimizer: bool = option(False, "ZeRO: keep optimizer state in CPU memory.")
    offload_params: bool = option(False, "ZeRO-3: keep parameters in CPU memory.")
    deepspeed: dict[str, Any] = option({}, "Raw DeepSpeed config merged over golong's (for experts).")
    micro_batch_max_tokens: int = option(32768, "Token budget of one packed micro-batch (prompt + response tokens) per rank; with sequence parallelism a row holds up to this x sequence_parallel_size tokens, each rank of the SP group computing 1/sp of them.")
    share_prompt: bool = option(True, "Prompt-once groups: a micro-batch packs [prompt, r_1..r_k], the prompt computed once per group (or per unit of a split group); false packs one prompt+response sequence per response.")
    sequence_parallel_size: int = option(1, "Ranks that train one packed row together (Ulysses through DeepSpeed ALST: each holds 1/sp of the row's tokens, attention splits the heads). Must divide the world size and split the model's heads (query heads divisible by it; KV heads divisible by it or dividing it). 1 turns it off.")
    max_skipped_steps: int = option(3, "Non-finite guard: a step whose loss or global gradient norm is not finite is skipped (weights and optimizer state unchanged, actor/skipped_steps counts it, a warning); this many skipped steps in a row stop the run with an error, its newest checkpoint holding the last good weights.")
    logprob_chunk_size: int = option(1024, "Tokens per chunk through the LM head, so [tokens x vocab] is never whole (1024 x 151,936 fp32 = 0.58 GiB).")
    val_every: int = option(0, "Validate on data.val_files (rollout.val_* sampling) before the first step and after every step that is a multiple of this; val/ metrics go into that step's metrics.jsonl line. 0 never validates.")
    save_best: bool = option(False, "Keep the checkpoint of the best save_best_metric in checkpoints/best/ (never deleted by keep_last; only a strictly better validation replaces it); needs val_every.")
    save_best_metric: str = option("val/macro", "The validation metric save_best maximizes: val/macro, val/mean_score, val/pass@1, val/<task>/mean_score or val/<task>/pass@1.")

    def validate(self) -> None:
        for name in ("total_steps", "save_every", "warmup_steps", "val_every"):
            if getattr(self, name) < 0:
                raise invalid(name, f"must be >= 0, got {getattr(self, name)}", "use 0 or a positive number")
        if self.total_epochs < 1:
            raise invalid("total_epochs", f"must be at least 1, got {self.total_epochs}", "use 1 or more")
        if self.keep_last < 1:
            raise invalid("keep_last", f"must be at least 1, got {self.keep_last}", "keep at least the latest checkpoint")
        if self.lr <= 0:
            raise invalid("lr", f"must be positive, got {self.lr}", "e.g. 2e-6")
        if len(self.adam_betas) != 2:
            raise invalid("adam_betas", f"needs two values, got {self.adam_betas}", "e.g. [0.9, 0.999]")
        if self.offload_params and self.zero_stage != 3:
            raise invalid("offload_params", f"needs zero_stage 3, got {self.zero_stage}", "set zero_stage: 3 or offload_params: false")
        if "optimizer" in self.deepspeed and self.weight_decay and not self.weight_decay_norms_and_biases:
            raise invalid("deepspeed.optimizer", "DeepSpeed builds that optimizer over all parameters in one group, "
                          "so norm weights and biases would be decayed although weight_decay_norms_and_biases is false",
                          "remove trainer.deepspeed.optimizer (golong builds AdamW, or DeepSpeed's CPU Adam with "
                          "offload_optimizer, with the right groups), or set weight_decay_norms_and_biases: true")
        if self.sequence_parallel_size < 1:
            raise invalid("sequence_parallel_size", f"must be at least 1, got {self.sequence_parallel_size}", "use 1 (off) or a divisor of the world size")
        if self.sequence_parallel_size > 1 and self.zero_stage == 3 and not self.deepspeed.get("zero_optimization", {}).get("reduce_scatter", True):
            raise invalid("sequence_parallel_size", "needs ZeRO-3's reduce_scatter (DeepSpeed 0.19.8 scales gradients "
                          "inconsistently without it under sequence parallelism)",
                          "remove trainer.deepspeed.zero_optimization.reduce_scatter (it defaults to true)")
        if self.max_skipped_steps < 1:
            raise invalid("max_skipped_steps", f"must be at least 1, got {self.max_skipped_steps}", "use 3")
        if self.micro_batch_max_tokens < 1 or self.logprob_chunk_size < 1:
            raise invalid("micro_batch_max_tokens/logprob_chunk_size", "must be positive", "use token counts such as 32768 and 1024")
        if not VAL_METRIC.match(self.save_best_metric):
            raise invalid("save_best_metric", f"{self.save_best_metric!r} is not a validation metric",
                          "use val/macro, val/mean_score, val/pass@1, val/<task>/mean_score or val/<task>/pass@1 "
                          "(e.g. val/T1/pass@1)")


VAL_METRIC = re.compile(r"^val/(macro|mean_score|pass@1|[^/]+/(mean_score|pass@1))$")  # what validation logs


@dataclass
class LoggingConfig:
    wandb: bool = option(False, "Log to Weights & Biases as well as metrics.jsonl.")
    wandb_project: str = option("golong", "wandb project name.")
    wandb_mode: Literal["online", "offline"] = option("offline", "wandb mode; offline needs no network (sync later with `wandb sync`).")
    run_name: str = option("", "Run name for wandb; empty uses the output folder's name.")
    progress_bar: bool = option(True, "Show a tqdm progress bar over steps on rank 0.")
    progress_keys: list[str] = option(["reward/mean", "response_length/mean", "time/step"],
                                      "Metrics shown beside the progress bar (those present in a step's metrics).")
    verbose: bool = option(False, "Show every library's console output; off, known-harmless third-party warnings go to output_dir/logs/ only (GOLONG_VERBOSE=1 does the same).")
    plot: bool = option(True, "Draw reward-per-task curves (and the validation curves, when the run validates) to PNG in the run folder at the end.")
    plot_smoothing: float = option(0.6, "Plot: exponential-moving-average weight of the drawn curves (0 draws the raw values).")

    def validate(self) -> None:
        if not 0 <= self.plot_smoothing < 1:
            raise invalid("plot_smoothing", f"must be in [0, 1), got {self.plot_smoothing}", "use 0.6, or 0 for raw values")
