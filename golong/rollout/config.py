"""Config of the colocated vLLM rollout engine: sampling, memory, weight sync and sleep."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from golong.configlib import invalid, option


@dataclass
class RolloutConfig:
    n: int = option(16, "Responses generated per prompt, the group size G (Table 12: 16).")
    temperature: float = option(1.0, "Sampling temperature (section 5.1: 1.0); the trainer divides logits by it too.")
    top_p: float = option(1.0, "Nucleus sampling (section 5.1: 1.0).")
    max_response_length: int = option(16384, "Most tokens generated per response (Table 12: 16K).")
    max_model_len: int = option(0, "vLLM context length; 0 derives data.max_prompt_length + max_response_length.")
    tensor_parallel_size: int = option(1, "vLLM tensor-parallel size, carved out of the torchrun world.")
    dtype: Literal["bfloat16", "float16"] = option("bfloat16", "Engine dtype; bfloat16 also on CPU, where float32 silently ignores weight updates.")
    gpu_memory_utilization: float = option(0.5, "Share of accelerator memory vLLM may take (weights + KV cache).")
    cpu_kvcache_space_gib: int = option(1, "KV-cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE).")
    enable_prefix_caching: bool = option(True, "Share a prompt's KV cache among its G responses.")
    enforce_eager: bool = option(False, "No CUDA graphs or torch.compile: slower generation, faster start (no ~20 s CPU warm-up).")
    sleep_level: Literal[0, 1, 2] = option(2, "CUDA sleep mode while training: 2 frees the engine's weights and KV cache (its buffers, a few MB, wait in host memory); the weights wake as garbage and the sync refills them before the KV cache wakes. 1 also frees both but first copies every weight to pinned host memory and back each step, though the sync overwrites them all (30B-A3B bf16, 61 GB, at TP 4 on an 8-GPU node: two engines, ~122 GB pinned). 0 never sleeps: the KV cache stays while training.")
    sync_bucket_mb: int = option(512, "Weight sync gathers ZeRO-3 parameters in buckets of about this size (whole decoder layers).")
    overlong_mask: bool = option(False, "Leave truncated responses (no EOS within max_response_length) out of the loss.")
    seed: int = option(0, "Sampling seed: each request is seeded from (it, the step, the prompt's group id in the step), so the ranks of a tensor-parallel group sample alike and a resumed run samples as an uninterrupted one.")
    router_replay: bool = option(False, "MoE models (R3): record the experts the engine routed every prompt and response token to, and make the trainer's forwards use exactly those experts (gate weights stay the trainer's, so the router still learns). CUDA: vLLM's enable_return_routed_experts (needs prefix caching); CPU: an in-process recorder that runs the engine eager and without prefix caching. Needs tensor_parallel_size 1 (vLLM 0.32 returns routes on a TP group's first rank only), and with mode streaming partial false.")
    record_routes: bool = option(False, "MoE models: record the engine's routes and log rollout/router_agreement without replaying them (router_replay implies it).")
    mode: Literal["sync", "streaming"] = option("sync", "sync: the paper's on-policy rounds, every round waits for its longest response. streaming: prompts flow into vLLM's engine step loop as slots free up, each group is scored as soon as its n responses finish, and generation stops once the step has its groups (golong/rollout/streaming.py; README 'Streaming rollouts').")
    partial: bool = option(False, "Streaming: responses still generating when the step has its groups are kept (tokens and their rollout log-probs) and continued after the weight sync, by the next policy (partial rollouts). false: they are aborted and their prompts go back first in the sampler (every trained token from the current policy).")
    stream_check_steps: int = option(8, "Streaming: vLLM engine steps between two checks, where the ranks count the finished groups (one small all-gather) and refill free slots with new prompts.")
    stream_max_groups: int = option(0, "Streaming: an engine keeps this many groups' worth of responses generating (stream_max_groups x n requests; a group whose other responses are done holds only its unfinished ones); 0 means a round's share, data.prompts_per_step (or dynamic_sampling.prompts_per_round) over the engines.")
    val_n: int = option(4, "Validation (trainer.val_every): responses per validation row; mean_score and pass@1 average over them.")
    val_temperature: float = option(0.6, "Validation sampling temperature (section 5.1's validation setting: 0.6); 0 is greedy, with val_n 1.")
    val_top_p: float = option(0.95, "Validation nucleus sampling (section 5.1: 0.95); validation trains on nothing, so IcePop's top_p 1.0 rule does not apply.")
    val_max_tokens: int = option(0, "Most tokens per validation response; 0 means max_response_length.")

    @property
    def val_response_length(self) -> int:
        """Most tokens of a validation response (val_max_tokens, or max_response_length when 0)."""
        return self.val_max_tokens or self.max_response_length

    def validate(self) -> None:
        if self.n < 1:
            raise invalid("n", f"must be at least 1, got {self.n}", "use the group size, e.g. 16")
        if self.temperature <= 0:
            raise invalid("temperature", f"must be positive, got {self.temperature}", "use 1.0 for training")
        if not 0 < self.top_p <= 1:
            raise invalid("top_p", f"must be in (0, 1], got {self.top_p}", "use 1.0")
        if self.max_response_length < 1:
            raise invalid("max_response_length", f"must be positive, got {self.max_response_length}", "e.g. 16384")
        if self.tensor_parallel_size < 1:
            raise invalid("tensor_parallel_size", f"must be at least 1, got {self.tensor_parallel_size}", "use 1, or a divisor of the number of ranks")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise invalid("gpu_memory_utilization", f"must be in (0, 1], got {self.gpu_memory_utilization}", "e.g. 0.5 when colocated with the trainer")
        if self.cpu_kvcache_space_gib < 1:
            raise invalid("cpu_kvcache_space_gib", f"must be at least 1, got {self.cpu_kvcache_space_gib}", "use 1 on a small machine")
        if self.sync_bucket_mb < 1:
            raise invalid("sync_bucket_mb", f"must be positive, got {self.sync_bucket_mb}", "e.g. 512")
        if self.stream_check_steps < 1:
            raise invalid("stream_check_steps", f"must be at least 1, got {self.stream_check_steps}", "e.g. 8")
        if self.stream_max_groups < 0:
            raise invalid("stream_max_groups", f"must be >= 0, got {self.stream_max_groups}", "use 0 for a round's share per engine")
        if self.partial and self.mode != "streaming":
            raise invalid("partial", "is true with rollout.mode=sync: only streaming leaves responses unfinished",
                          "set rollout.mode=streaming, or rollout.partial=false")
        self._check_validation()
        self._check_routes()

    def _check_validation(self) -> None:
        if self.val_n < 1:
            raise invalid("val_n", f"must be at least 1, got {self.val_n}", "use e.g. 4 (golong eval's default G)")
        if self.val_temperature < 0:
            raise invalid("val_temperature", f"must be >= 0, got {self.val_temperature}", "use 0.6 (section 5.1), or 0 for greedy")
        if self.val_temperature == 0 and self.val_n > 1:
            raise invalid("val_n", f"is {self.val_n} with val_temperature 0: greedy decoding gives the same response "
                          f"{self.val_n} times", "set rollout.val_n=1 for greedy validation, or a positive "
                          "rollout.val_temperature such as 0.6")
        if not 0 < self.val_top_p <= 1:
            raise invalid("val_top_p", f"must be in (0, 1], got {self.val_top_p}", "use 0.95 (section 5.1)")
        if self.val_max_tokens < 0:
            raise invalid("val_max_tokens", f"must be >= 0, got {self.val_max_tokens}", "use 0 for max_response_length, or a token count")

    def _check_routes(self) -> None:
        """What vLLM 0.32's routed-experts output (the CUDA route source) cannot do.

        It returns the routes on the first rank of a tensor-parallel group only (its aux-output worker keeps
        no store on the others), and with golong's colocated engines (external_launcher) every rank runs its
        own scheduler, which asserts on the missing output on the other ranks. It also keeps the routes per
        cached KV block and refuses to start without prefix caching (on CPU golong's in-process recorder
        turns prefix caching off itself, so the key matters only on CUDA, and is checked alike)."""
        key = "router_replay" if self.router_replay else "record_routes" if self.record_routes else None
        if key is None:
            return
        if self.mode == "streaming" and self.partial:
            raise invalid(key, "does not work with rollout.partial=true yet: a continued response's routes would join "
                          "segments routed by two policies, and vLLM 0.32 returns routed experts only with a finished "
                          "request's last output, never for an aborted one",
                          f"set rollout.partial=false (streaming without partial rollouts records routes), or "
                          f"rollout.{key}=false")
        if self.tensor_parallel_size > 1:
            raise invalid(key, f"needs rollout.tensor_parallel_size=1, got {self.tensor_parallel_size}: vLLM 0.32 "
                          "returns routed experts on the first rank of a tensor-parallel group only, and the "
                          "other ranks' schedulers assert on the missing output",
                          f"set rollout.tensor_parallel_size=1 (the engine's weights must then fit one GPU), "
                          f"or rollout.{key}=false")
        if not self.enable_prefix_caching:
            raise invalid("enable_prefix_caching", f"false with rollout.{key}: vLLM 0.32 returns routed experts "
                          "only with prefix caching on", "set rollout.enable_prefix_caching=true (on CPU the "
                          "route recorder turns it off by itself)")


def check_router_replay(cfg: RolloutConfig, model_path: str) -> None:
    """Refuse rollout.router_replay / record_routes for a model that is not MoE, when its config.json can be read."""
    import json
    import os

    key = "router_replay" if cfg.router_replay else "record_routes" if cfg.record_routes else None
    config_file = os.path.join(model_path, "config.json")
    if key is None or not os.path.isfile(config_file):
        return
    with open(config_file) as f:
        model_config = json.load(f)
    model_config = model_config.get("text_config", model_config)
    experts = max(int(model_config.get(name) or 0) for name in ("num_experts", "num_local_experts", "n_routed_experts"))
    if experts <= 0:
        raise invalid(f"rollout.{key}", f"{model_path} is not a mixture-of-experts model (its config.json names no experts)",
                      f"set rollout.{key}=false, or train an MoE model such as Qwen3-30B-A3B")
