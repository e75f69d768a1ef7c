"""Sampling options shared by `golong eval` and `golong data calibrate`; their defaults come from the
config sections they fill (RolloutConfig, RewardConfig, DataConfig), except the three each command picks
for itself (responses per row, temperature, top-p)."""
from __future__ import annotations

import argparse


def add_sampling_args(p: argparse.ArgumentParser, g: int, temperature: float, top_p: float) -> None:
    from golong.data.config import DataConfig
    from golong.rewards.config import RewardConfig
    from golong.rollout.config import RolloutConfig

    rollout, reward, data = RolloutConfig(), RewardConfig(), DataConfig()
    p.add_argument("--g", type=int, default=g, help=f"responses per row (default {g})")
    p.add_argument("--temperature", type=float, default=temperature, help=f"sampling temperature (default {temperature})")
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    p.add_argument("--max-tokens", type=int, default=rollout.max_response_length,
                   help=f"most tokens per response (default {rollout.max_response_length}: rollout.max_response_length)")
    p.add_argument("--max-prompt-length", type=int, default=data.max_prompt_length,
                   help=f"rows with longer prompts are skipped and counted (default {data.max_prompt_length})")
    p.add_argument("--no-thinking", action="store_true", help="chat template with enable_thinking=False")
    p.add_argument("--require-think-close", action="store_true",
                   help="a response without </think> scores 0 (thinking models whose template opens <think>)")
    p.add_argument("--pass-threshold", type=float, default=reward.pass_threshold,
                   help=f"a response passes when its reward is at least this (default {reward.pass_threshold})")
    p.add_argument("--tensor-parallel-size", type=int, default=rollout.tensor_parallel_size,
                   help=f"vLLM tensor parallelism (default {rollout.tensor_parallel_size})")
    p.add_argument("--gpu-memory-utilization", type=float, default=rollout.gpu_memory_utilization,
                   help="share of accelerator memory (CPU: of host memory) vLLM may take "
                        f"(default {rollout.gpu_memory_utilization})")
    p.add_argument("--seed", type=int, default=rollout.seed, help=f"sampling seed (default {rollout.seed})")


def configs_from_args(args: argparse.Namespace):
    """The rollout, reward and data sections (RolloutConfig, RewardConfig, DataConfig) the sampling
    options describe, validated."""
    from golong.configlib import build
    from golong.data.config import DataConfig
    from golong.rewards.config import RewardConfig
    from golong.rollout.config import RolloutConfig

    rollout = build(RolloutConfig, {
        "n": args.g, "temperature": args.temperature, "top_p": args.top_p, "max_response_length": args.max_tokens,
        "tensor_parallel_size": args.tensor_parallel_size, "gpu_memory_utilization": args.gpu_memory_utilization,
        "seed": args.seed})
    reward = build(RewardConfig, {"pass_threshold": args.pass_threshold, "require_think_close": args.require_think_close})
    data = build(DataConfig, {"max_prompt_length": args.max_prompt_length, "enable_thinking": not args.no_thinking})
    return rollout, reward, data
