"""The experts the rollout engine routed each token to, for router replay (R3; the trainer side is
golong/replay/trainer.py).

A response's routes are a (P + R - 1, L, k) array: for each prompt and response token but the last
sampled one (which is never fed back to the model, so never routed), for each of the model's L
decoder layers, the k experts vLLM's MoE layer chose, in the narrowest integer dtype (uint8 for at
most 256 experts). This is the layout of vLLM's own `CompletionOutput.routed_experts`
([seq_len, layer_num, topk]).

Two sources, one per platform (`route_source`):

- "vllm_api" (CUDA): vLLM 0.32's `LLM(enable_return_routed_experts=True)`, which fills
  `CompletionOutput.routed_experts`. It needs Model Runner V2 (`VLLM_USE_V2_MODEL_RUNNER=1`), which
  needs Triton: on the CPU backend the engine refuses to start.
- "in_process_recorder" (CPU, where golong runs the engine core in its own process):
  `RouteRecorder` hooks vLLM's MoE routers (`BaseRouter.set_capture_fn`, called with the top-k
  expert ids of every scheduled token, before any expert-parallel remapping) and the model
  runner's `execute_model`, and maps the step's flattened tokens to requests through the runner's
  batch layout (`input_batch.req_ids` in index order, `num_scheduled_tokens` per request) and
  positions (`runner.positions`). Every recorded token is checked against the request's token ids
  at its position, and a response with any unrecorded position is refused, so a route is either the
  one vLLM computed for that token or an error. Prompt tokens served from the prefix cache would
  never be routed: the engine runs without prefix caching while recording.
"""
from __future__ import annotations

import functools
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from golong.replay.trainer import route_dtype

VLLM_API, IN_PROCESS_RECORDER = "vllm_api", "in_process_recorder"


def route_source(platform_is_cuda: bool) -> str:
    """Where routes come from on this platform (see the module docstring)."""
    return VLLM_API if platform_is_cuda else IN_PROCESS_RECORDER


def routes_from_vllm_api(completion, num_tokens: int, num_experts: int) -> np.ndarray:
    """CUDA path: a completion's `routed_experts` ([seq_len, layer_num, topk]) as (num_tokens - 1, L, k)."""
    return _vllm_routes(completion.routed_experts, num_tokens, num_experts)


def _vllm_routes(routed, num_tokens: int, num_experts: int) -> np.ndarray:
    if routed is None:
        raise RuntimeError("vLLM returned no routed_experts: was the engine built with enable_return_routed_experts=True?")
    routed = np.asarray(routed)
    if routed.shape[0] < num_tokens - 1:
        raise RuntimeError(f"vLLM returned routes for {routed.shape[0]} tokens, expected {num_tokens - 1} "
                           "(prompt + response - 1)")
    return routed[: num_tokens - 1].astype(np.dtype(str(route_dtype(num_experts)).removeprefix("torch.")))


@dataclass
class _Chunk:
    """The tokens of one request that one engine step computed."""

    positions: np.ndarray  # (n,) int64 positions in the request's sequence
    token_ids: np.ndarray  # (n,) int64 the token fed at each position
    routes: np.ndarray  # (n, L, k) int32 the experts each MoE layer chose


@dataclass
class RouteRecorder:
    """Records, in the engine's worker process, the experts every computed token was routed to.

    Build it with `RouteRecorder.attach(worker)` (e.g. through `llm.collective_rpc`); `take()` hands
    over and forgets the chunks recorded since the last call, keyed by vLLM's internal request id.
    """

    num_layers: int
    top_k: int
    num_experts: int
    moe_layers: list[int]
    buffer: torch.Tensor  # (max_num_tokens, L, k) int32, the current step's captured top-k ids
    chunks: dict[str, list[_Chunk]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def attach(cls, worker) -> RouteRecorder:
        from vllm.model_executor.layers.fused_moe.layer import MoERunner
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        runner = worker.model_runner
        existing = getattr(runner, "_golong_route_recorder", None)
        if existing is not None:
            return existing
        model_config = runner.vllm_config.model_config
        moe = [m for m in runner.get_model().modules() if isinstance(m, MoERunner)]
        if not moe:
            raise ValueError("router replay: the vLLM model has no MoE layers (rollout.router_replay needs an MoE model)")
        if not all(isinstance(m.router, BaseRouter) for m in moe):
            raise ValueError(f"router replay: cannot record routes from router {type(moe[0].router).__name__}")
        top_k, num_layers = model_config.get_num_experts_per_tok(), model_config.get_total_num_hidden_layers()
        recorder = cls(num_layers=num_layers, top_k=top_k, num_experts=model_config.get_num_experts(),
                       moe_layers=sorted(m.layer_id for m in moe),
                       buffer=torch.full((runner.max_num_tokens, num_layers, top_k), -1, dtype=torch.int32))
        for m in moe:
            m.router.set_capture_fn(functools.partial(recorder._capture, m.layer_id))
        execute_model = runner.execute_model

        @functools.wraps(execute_model)
        def recording_execute_model(scheduler_output, *args, **kwargs):
            num_tokens = scheduler_output.total_num_scheduled_tokens
            if num_tokens:
                recorder.buffer[:num_tokens] = -1  # a layer that did not capture shows as -1
            output = execute_model(scheduler_output, *args, **kwargs)
            if num_tokens:
                recorder._collect(runner, scheduler_output, num_tokens)
            return output

        runner.execute_model = recording_execute_model
        runner._golong_route_recorder = recorder
        return recorder

    def _capture(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        # topk_ids: (N, k) for the step's N flattened tokens (a padded batch may give more rows)
        self.buffer[: topk_ids.shape[0], layer_id] = topk_ids.to(self.buffer.device, torch.int32)

    def _collect(self, runner, scheduler_output, num_tokens: int) -> None:
        counts = scheduler_output.num_scheduled_tokens  # {request id: tokens this step}
        req_ids = list(runner.input_batch.req_ids)  # the forward's request order (index order)
        if sorted(req_ids) != sorted(counts) or sum(counts.values()) != num_tokens:
            raise RuntimeError("router replay: the model runner's batch layout does not match the scheduled tokens")
        routes = self.buffer[:num_tokens].numpy().copy()
        if (routes[:, self.moe_layers] < 0).any():
            raise RuntimeError("router replay: an MoE layer did not report its routing this step "
                               "(a kernel path that bypasses the router's capture hook)")
        positions = runner.positions[:num_tokens].cpu().numpy().copy()
        token_ids = runner.input_ids.cpu[:num_tokens].numpy().astype(np.int64)
        start = 0
        for rid in req_ids:
            end = start + counts[rid]
            self.chunks[rid].append(_Chunk(positions[start:end], token_ids[start:end], routes[start:end]))
            start = end

    def take(self) -> dict[str, list[_Chunk]]:
        chunks, self.chunks = dict(self.chunks), defaultdict(list)
        return chunks


def take_recorded(worker) -> dict[str, list[_Chunk]]:
    """collective_rpc target: the chunks recorded since the last call (in-process engines only)."""
    return worker.model_runner._golong_route_recorder.take()


def attach_recorder(worker) -> tuple[int, int, int]:
    """collective_rpc target: attach a RouteRecorder; returns (layers, top_k, experts)."""
    recorder = RouteRecorder.attach(worker)
    return recorder.num_layers, recorder.top_k, recorder.num_experts


def external_id(internal_id: str) -> str:
    """vLLM's request id as the caller sees it: the engine appends "-" and 8 random characters unless
    VLLM_DISABLE_REQUEST_ID_RANDOMIZATION is set (a wrong guess is caught by the token check)."""
    head, _, tail = internal_id.rpartition("-")
    return head if head and len(tail) == 8 else internal_id


def assemble_routes(chunks: list[_Chunk], tokens: list[int], num_experts: int, moe_layers: list[int]) -> np.ndarray:
    """(len(tokens) - 1, L, k) a response's routes from its recorded chunks; refuses gaps and token mismatches."""
    if not chunks:
        raise RuntimeError("router replay: no routes were recorded for a response")
    layers, k = chunks[0].routes.shape[1:]
    need = len(tokens) - 1
    out = np.full((need, layers, k), -1, dtype=np.int64)
    ids = np.asarray(tokens, dtype=np.int64)
    for chunk in chunks:
        keep = chunk.positions < need  # a position past the response cannot occur; kept defensive
        pos = chunk.positions[keep]
        if not np.array_equal(chunk.token_ids[keep], ids[pos]):
            raise RuntimeError("router replay: recorded tokens differ from the response's tokens (request mapping)")
        out[pos] = chunk.routes[keep]  # a recomputed (preempted) position is overwritten alike
    missing = int((out[:, moe_layers] < 0).any(axis=(1, 2)).sum())
    if missing:
        raise RuntimeError(f"router replay: {missing} of {need} tokens were never routed by the engine "
                           "(served from the prefix cache?); record with enable_prefix_caching off")
    out[out < 0] = 0  # rows of non-MoE layers: ignored by the trainer
    return out.astype(np.dtype(str(route_dtype(num_experts)).removeprefix("torch.")))


class RouteCollector:
    """The rollout engine's side of router replay: engine arguments for the platform's route source,
    the recorder attached once the engine is up, and every completion's routes after a generate call."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.source = route_source(torch.cuda.is_available()) if enabled else None
        self.num_experts = 0
        self.moe_layers: list[int] = []
        self.pending: dict[str, list[_Chunk]] = {}  # streaming, CPU: recorded chunks of unfinished requests

    def engine_kwargs(self, kwargs: dict) -> dict:
        """`vllm.LLM` kwargs with what the route source needs."""

        if self.source == VLLM_API:
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"  # routed_experts needs Model Runner V2
            return {**kwargs, "enable_return_routed_experts": True}
        if self.source == IN_PROCESS_RECORDER:
            # Eager: a compiled model would have traced the routers before the recorder's hooks exist.
            # No prefix caching: a cached prompt token is never routed, so it would have no route.
            return {**kwargs, "enforce_eager": True, "enable_prefix_caching": False}
        return kwargs

    def attach(self, llm) -> None:
        """After the engine started: learn the model's MoE layout (and hook the recorder on CPU)."""
        if not self.enabled:
            return
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0" and self.source == IN_PROCESS_RECORDER:
            raise RuntimeError("router replay on CPU records routes inside the engine core: it needs "
                               "VLLM_ENABLE_V1_MULTIPROCESSING=0 (golong's RolloutEngine sets it)")
        if self.source == IN_PROCESS_RECORDER:
            llm.collective_rpc(attach_recorder)
        model_config = llm.llm_engine.model_config
        self.num_experts = model_config.get_num_experts()
        if self.num_experts <= 0:
            raise ValueError("rollout.router_replay needs an MoE model; this model has no experts. "
                             "Fix: set rollout.router_replay=false")
        layers = model_config.get_total_num_hidden_layers()
        hf = model_config.hf_text_config
        only_dense = set(getattr(hf, "mlp_only_layers", []) or [])
        step = getattr(hf, "decoder_sparse_step", 1) or 1
        self.moe_layers = [i for i in range(layers) if i not in only_dense and (i + 1) % step == 0]

    # Streaming (golong/rollout/streaming.py): one request per response, finishing at any engine step. On CPU
    # the recorder's chunks are taken after every step and kept per request until it finishes (or is
    # aborted); on CUDA vLLM hands a finished request's routes over with its last output.

    def stream_step(self, llm) -> None:
        """After an engine step: keep what the recorder took, by request (CPU source)."""
        if self.source == IN_PROCESS_RECORDER:
            (chunks,) = llm.collective_rpc(take_recorded)
            for rid, c in chunks.items():
                self.pending.setdefault(external_id(rid), []).extend(c)

    def stream_routes(self, request_id: str, tokens: list[int], routed_experts) -> np.ndarray:
        """(len(tokens) - 1, L, k): the routes of a finished streaming request; tokens = its prompt + response."""
        if self.source == VLLM_API:
            return _vllm_routes(routed_experts, len(tokens), self.num_experts)
        if request_id not in self.pending:
            raise RuntimeError(f"router replay: nothing recorded for request {request_id!r}")
        return assemble_routes(self.pending.pop(request_id), tokens, self.num_experts, self.moe_layers)

    def stream_drop(self, request_ids: list[str] | None = None) -> None:
        """Forget the chunks of aborted requests (all of them: None)."""
        if request_ids is None:
            self.pending.clear()
        for rid in request_ids or []:
            self.pending.pop(rid, None)

    def collect(self, llm, outputs) -> list[np.ndarray] | None:
        """(responses,) each (P + R - 1, L, k): routes of every completion, in the order golong lists
        them (requests in input order, completions by index); None when disabled."""
        if not self.enabled:
            return None
        recorded = {}
        if self.source == IN_PROCESS_RECORDER:
            (chunks,) = llm.collective_rpc(take_recorded)
            recorded = {external_id(rid): c for rid, c in chunks.items()}
        routes = []
        for output in outputs:
            completions = sorted(output.outputs, key=lambda c: c.index)
            for completion in completions:
                tokens = [*output.prompt_token_ids, *completion.token_ids]
                if self.source == VLLM_API:
                    routes.append(routes_from_vllm_api(completion, len(tokens), self.num_experts))
                else:  # parallel sampling names its child requests "<index>_<request id>"
                    key = f"{completion.index}_{output.request_id}" if len(output.outputs) > 1 else output.request_id
                    if key not in recorded:
                        raise RuntimeError(f"router replay: nothing recorded for request {key!r}")
                    routes.append(assemble_routes(recorded[key], tokens, self.num_experts, self.moe_layers))
        return routes
