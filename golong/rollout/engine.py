"""The colocated vLLM engine: generates groups of responses in the trainer's own processes.

Under torchrun every rank builds `vllm.LLM` with `distributed_executor_backend="external_launcher"`:
vLLM carves tensor-parallel groups of `tensor_parallel_size` consecutive ranks out of the world,
and each group is one engine that serves its own prompts (rollout data parallelism). All ranks of a
group must call `generate` with the same prompts; they get the same responses back.

Token in, token out: prompts are token ids (chat-templated by golong/data), responses come back as
the sampled ids with vLLM's processed log-probs (after temperature and top-p; the trainer applies the
temperature only, so training keeps top_p=1.0, which the config enforces while IcePop is on). Training
uses exactly what was sampled; nothing is decoded and re-encoded.

One step, as the training loop drives it:

    batch = engine.generate(prompts, seeds=...)  # engine awake
    engine.sleep()                               # free the KV cache and the weights (level 2: dropped)
    ... train ...
    engine.update_weights(model)                 # wake_up_weights -> sync_weights -> wake_up_kv_cache:
                                                 # gathered buckets never share memory with the KV cache

The order is checked on every platform (`SleepState`: a call out of order raises), although only CUDA
has vLLM's sleep mode; elsewhere the sleep/wake calls free nothing. With GOLONG_ROLLOUT_TRACE=FILE set,
every rank appends each call it made ({"rank", "event"[, "seeds"]}, one JSON line) to FILE: a diagnostic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from golong.console import is_verbose
from golong.rollout.batch import RolloutBatch
from golong.rollout.config import RolloutConfig
from golong.replay.rollout import RouteCollector
from golong.rollout.weight_sync import (
    SyncStats,
    extra_bytes,
    gathered_weights,
    plan_buckets,
    reload_weights_in_place,
)
from golong.world import ParallelLayout, World, current_world, rejoin_world

logger = logging.getLogger(__name__)


@dataclass
class StreamDelta:
    """What one engine step sampled for one streaming request (`RolloutEngine.step_requests`)."""

    request_id: str
    token_ids: list[int]  # (k,) the tokens sampled in this step
    logprobs: list[float]  # (k,) their processed log-probs
    finished: bool  # EOS, a stop token, or max_tokens
    truncated: bool  # finished by max_tokens (finish_reason "length")
    routed_experts: object = None  # CUDA router replay: vLLM's [seq_len, layers, top_k] routes, on the last output


class SleepState:
    """Where the engine is in the step's sleep cycle, so that a call out of order fails on every platform
    (CUDA sleep mode would otherwise write into unmapped weights or serve requests from dropped ones).

    awake --sleep--> asleep --wake_up_weights--> weights_awake --sync--> weights_awake (synced)
          <--------------------------wake_up_kv_cache-----------------------'
    Level 2 drops the weights: wake_up_kv_cache needs a sync after the wake. Level 0 never sleeps."""

    def __init__(self, level: int):
        self.level = level
        self.state = "awake"
        self.weights_stale = False  # level-2 sleep dropped the weights and no sync has refilled them

    def _expect(self, call: str, *states: str) -> None:
        if self.state not in states:
            raise RuntimeError(f"rollout engine: {call} while {self.state}; the step's order is generate -> "
                               "sleep -> wake_up_weights -> sync_weights -> wake_up_kv_cache")

    def generate(self) -> None:
        self._expect("generate", "awake")

    def sleep(self) -> None:
        if self.level:
            self._expect("sleep", "awake")
            self.state, self.weights_stale = "asleep", self.level == 2

    def wake_up_weights(self) -> None:
        if self.level:
            self._expect("wake_up_weights", "asleep")
            self.state = "weights_awake"

    def sync(self) -> None:
        self._expect("sync_weights", "awake", "weights_awake")  # awake: a sync with the KV cache up (allowed)
        self.weights_stale = False

    def wake_up_kv_cache(self) -> None:
        if self.level:
            self._expect("wake_up_kv_cache", "weights_awake")
            if self.weights_stale:
                raise RuntimeError("rollout engine: level-2 sleep dropped the weights: call sync_weights "
                                   "before wake_up_kv_cache")
            self.state = "awake"


def request_seeds(seed: int, step: int, prompt_ids: Sequence[int]) -> list[int]:
    """One sampling seed per request: a pure function of (rollout.seed, the step, the prompt's global
    identity in that step), never of which rank generates it, so every rank of a tensor-parallel group
    builds the very same SamplingParams. vLLM seeds the request's own generator with it (its n samples
    take seed + 0 .. n - 1: parallel sampling's child requests). 62 bits, so seed + n stays an int64."""
    return [int.from_bytes(hashlib.blake2b(f"golong-rollout:{seed}:{step}:{prompt}".encode(),
                                           digest_size=8).digest(), "little") >> 2 for prompt in prompt_ids]


class RolloutEngine:
    """One vLLM engine per rollout data-parallel group, living in this process.

    In-process vLLM seeds the process's global RNGs (random, numpy, torch) with its seed when it
    starts: build the engine before seeding the trainer.
    """

    def __init__(self, cfg: RolloutConfig, model_path: str, max_model_len: int, world: World | None = None,
                 layout: ParallelLayout | None = None):
        self.world = world or current_world()
        tp = cfg.tensor_parallel_size
        self.layout = ParallelLayout.for_component(layout, self.world, tp=tp)  # the run's (golong/world.py)
        if max_model_len <= cfg.max_response_length:
            raise ValueError(f"max_model_len={max_model_len} leaves no room for a prompt next to "
                             f"rollout.max_response_length={cfg.max_response_length}")
        rejoin_world(self.world)  # a previous engine's shutdown destroyed the process group (close)
        self.cfg = cfg
        self.max_model_len = max_model_len
        self.dtype = getattr(torch, cfg.dtype)

        # The engine core must run in this process: weight sync hands it tensors by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space_gib)  # read by the CPU backend only
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its per-sync INFO lines would drown the progress bar
        from vllm import LLM
        from vllm.platforms import current_platform

        # Sleep mode needs the CUDA memory pool; elsewhere sleep/wake are no-ops.
        self.sleep_mode = cfg.sleep_level > 0 and current_platform.is_sleep_mode_available()
        self.sleep_state = SleepState(cfg.sleep_level)  # checked on every platform
        self._trace = os.environ.get("GOLONG_ROLLOUT_TRACE")
        self.last_seeds: list[int | None] = []  # the seeds of the last generate call's requests, in order
        self.routes = RouteCollector(cfg.router_replay or cfg.record_routes)  # router replay (golong/replay/rollout.py)
        # CPU: a seeded request whose prefill is chunked over engine steps makes vLLM 0.32 rewind its generator
        # (`set_offset`), which a CPU torch.Generator lacks ("CPU Generator does not use offset"). Per-request
        # seeds are always passed, so on CPU whole prefills only (chunked prefill off, a step's token budget at
        # least one whole prompt + response). CUDA generators have offsets: vLLM's defaults stay.
        cpu_prefill = (dict(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, max_model_len))
                       if current_platform.is_cpu() else {})
        self.llm = LLM(**self.routes.engine_kwargs(dict(
            **cpu_prefill,
            model=model_path,
            dtype=cfg.dtype,
            tensor_parallel_size=tp,
            distributed_executor_backend="external_launcher" if self.world.size > 1 else None,
            seed=cfg.seed + self.layout.rollout_dp_rank,  # ranks of one TP group must sample alike
            max_model_len=max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager,
            enable_sleep_mode=self.sleep_mode,
            logprobs_mode="processed_logprobs",  # log softmax(logits / T) after top-p, as the trainer computes
            use_tqdm_on_load=is_verbose(),  # golong's start-up line says the engine is loading
        )))
        self.routes.attach(self.llm)  # router replay

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(self, prompts: list[list[int]], *, seeds: list[int] | None = None, n: int | None = None,
                 temperature: float | None = None, top_p: float | None = None,
                 max_tokens: int | None = None) -> RolloutBatch:
        """`n` responses per prompt (defaults from the config; temperature 0 is greedy).

        seeds[i]: prompt i's sampling seed (`request_seeds`); the same seeds give the same responses.
        Without them vLLM samples from its engine-wide generator, whose state depends on every request
        it served before: only lock-step callers would sample alike. Training and eval always pass them.

        A prompt with len(prompt) + max_tokens > max_model_len is filtered out before the engine,
        counted and logged: it fits the context but vLLM would stop its responses at the context
        limit, short of max_tokens, so it could never get a full-length answer. With the derived
        max_model_len (max prompt + max response) only prompts the data filter let through by
        mistake can hit this.
        """
        from vllm import SamplingParams, TokensPrompt

        cfg = self.cfg
        n = cfg.n if n is None else n
        max_tokens = cfg.max_response_length if max_tokens is None else max_tokens
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
        params = [SamplingParams(
            n=n,
            temperature=cfg.temperature if temperature is None else temperature,
            top_p=cfg.top_p if top_p is None else top_p,
            max_tokens=max_tokens,
            seed=None if seeds is None else seeds[i],
            logprobs=0,  # the sampled token's log-prob only
            flat_logprobs=True,  # one flat list per response instead of a dict per token
            detokenize=False,
        ) for i in range(len(prompts))]
        self.sleep_state.generate()
        fits = [len(prompt) + max_tokens <= self.max_model_len for prompt in prompts]
        kept = [i for i, ok in enumerate(fits) if ok]
        filtered = [i for i, ok in enumerate(fits) if not ok]
        if filtered:
            logger.warning("rollout: %d of %d prompts filtered: prompt + max_tokens (%d) > max_model_len (%d); "
                           "longest prompt %d tokens", len(filtered), len(prompts), max_tokens,
                           self.max_model_len, max(len(prompts[i]) for i in filtered))

        start = time.perf_counter()
        self.last_seeds = [params[i].seed for i in kept]  # what this rank asked vLLM for (TP ranks: the same)
        self._record("generate", seeds=self.last_seeds)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in kept],
                                    [params[i] for i in kept], use_tqdm=False) if kept else []
        seconds = time.perf_counter() - start

        prompt_index, response_ids, logprobs, truncated = [], [], [], []
        for index, output in zip(kept, outputs):  # vLLM returns requests in input order
            for completion in sorted(output.outputs, key=lambda c: c.index):
                prompt_index.append(index)
                response_ids.append(list(completion.token_ids))
                logprobs.append(list(completion.logprobs.logprobs))  # logprobs=0: one entry per token
                truncated.append(completion.finish_reason == "length")  # not "stop" (EOS or a stop token)
        return RolloutBatch(
            routes=self.routes.collect(self.llm, outputs),  # router replay: (P+R-1, L, k) per response, or None
            prompt_index=prompt_index,
            response_ids=response_ids,
            logprobs=logprobs,
            truncated=truncated,
            num_filtered=len(filtered),
            seconds=seconds,
        )

    # ------------------------------------------------------------------------------------------
    # Streaming (rollout.mode=streaming, golong/rollout/streaming.py): vLLM's own engine step loop, one
    # request per response, driven by the caller. Every rank of a tensor-parallel group makes the same
    # calls in the same order (the collector decides from gathered data only), as `generate` requires.

    def add_request(self, request_id: str, prompt: list[int], *, seed: int, max_tokens: int) -> None:
        """Queue one response (n=1) of `prompt` (token ids: a prompt, or a prompt and the response so far
        when a partial response continues). Its new tokens and log-probs come back from `step_requests`."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        self.sleep_state.generate()
        if len(prompt) + max_tokens > self.max_model_len:
            raise ValueError(f"streaming request {request_id}: {len(prompt)} prompt tokens + max_tokens {max_tokens} "
                             f"> max_model_len {self.max_model_len}")
        params = SamplingParams(n=1, temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_tokens=max_tokens,
                                seed=seed, logprobs=0, flat_logprobs=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)  # each step: only the new tokens
        self._record("add_request", request=request_id, seed=seed, tokens=len(prompt))
        engine = self.llm.llm_engine
        (engine_input,) = engine.renderer.render_cmpl([TokensPrompt(prompt_token_ids=prompt)])
        engine.add_request(request_id, engine_input, params)

    def step_requests(self) -> list[StreamDelta]:
        """One vLLM engine step: the tokens each running request sampled in it (nothing when idle)."""
        engine = self.llm.llm_engine
        if not engine.has_unfinished_requests():
            return []
        deltas = []
        for output in engine.step():
            completion = output.outputs[0]
            deltas.append(StreamDelta(
                request_id=output.request_id, token_ids=list(completion.token_ids),
                logprobs=list(completion.logprobs.logprobs) if completion.logprobs is not None else [],
                finished=output.finished, truncated=completion.finish_reason == "length",
                routed_experts=getattr(completion, "routed_experts", None)))
        if self.routes.enabled:  # router replay: the step's recorded routes, kept per request
            self.routes.stream_step(self.llm)
        return deltas

    def has_unfinished_requests(self) -> bool:
        return self.llm.llm_engine.has_unfinished_requests()

    def abort_requests(self, request_ids: list[str]) -> None:
        """Stop these requests now (their tokens so far were already returned by `step_requests`)."""
        if request_ids:
            self._record("abort", requests=list(request_ids))
            self.llm.llm_engine.abort_request(request_ids)
            self.routes.stream_drop(request_ids)

    # ------------------------------------------------------------------------------------------
    # Weight sync

    @torch.no_grad()
    def sync_weights(self, module: torch.nn.Module) -> SyncStats:
        """Load `module`'s current weights (the HF model, ZeRO-3 partitioned or not) into the engine.

        Collective: every rank calls it with its own module. Parameters are gathered in buckets
        of at most `sync_bucket_mb` (whole decoder layers), cast to the engine dtype and streamed
        into vLLM's in-place reload; then the prefix cache, filled by the old weights, is reset.

        `peak_extra_bytes`: on CUDA, measured (peak allocated during the sync minus before);
        elsewhere, counted: the largest bucket's gathered shards of other ranks plus its
        engine-dtype copies (vLLM's one-layer staging buffer is not counted).
        """
        self.sleep_state.sync()
        self._record("sync")
        start = time.perf_counter()
        on_cuda = torch.cuda.is_available()
        if on_cuda:
            torch.cuda.synchronize()
            allocated_before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

        buckets = plan_buckets(list(module.named_parameters()), self.cfg.sync_bucket_mb * 2**20)
        self.llm.collective_rpc(reload_weights_in_place, args=(gathered_weights(module, buckets, self.dtype),))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a weight sync (requests running?)")

        if on_cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - allocated_before
        else:
            peak = max(extra_bytes(bucket, self.dtype) for bucket in buckets)
        return SyncStats(seconds=time.perf_counter() - start, peak_extra_bytes=peak, num_buckets=len(buckets))

    # ------------------------------------------------------------------------------------------
    # Sleep and wake (CUDA sleep mode: the `if self.sleep_mode` lines; the order is checked everywhere)

    def sleep(self) -> None:
        """After generation: drop the KV cache, and the weights (level 2) or offload them to host (level 1)."""
        self.sleep_state.sleep()
        self._record("sleep")
        if self.sleep_mode:
            self.llm.sleep(level=self.cfg.sleep_level)

    def wake_up_weights(self) -> None:
        """Before the sync: the weights' device memory back (level 2: allocated, contents garbage)."""
        self.sleep_state.wake_up_weights()
        self._record("wake_up_weights")
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])

    def wake_up_kv_cache(self) -> None:
        """After the sync: the KV cache back, so gathered buckets and KV cache never coexist."""
        self.sleep_state.wake_up_kv_cache()
        self._record("wake_up_kv_cache")
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])

    def update_weights(self, module: torch.nn.Module) -> SyncStats:
        """After `sleep()`: wake the weights, sync them from `module`, then wake the KV cache."""
        self.wake_up_weights()
        stats = self.sync_weights(module)
        self.wake_up_kv_cache()
        return stats

    def _record(self, event: str, **data) -> None:
        if self._trace:
            with open(self._trace, "a") as f:  # one short append per line: whole lines from every rank
                f.write(json.dumps({"rank": self.world.rank, "event": event, **data}) + "\n")

    def close(self) -> None:
        """Shut the engine down and free its memory.

        vLLM 0.32's shutdown also tears down torch.distributed (EngineCore.shutdown ->
        cleanup_dist_env_and_memory destroys the default process group), so under torchrun
        close the rollout engine after everything else that needs the process group; a next
        RolloutEngine rejoins the world first (golong.world.rejoin_world).
        """
        if self.llm is None:
            return
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
