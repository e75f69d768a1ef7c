"""Rollout routing replay (R3): the trainer's MoE layers route every token to the experts the rollout
engine routed it to.

Why: in an MoE policy the largest trainer/rollout mismatch is routing. A bf16 inference engine and the
trainer disagree on a share of the top-k choices (near-ties flip), so the trainer scores tokens with
other experts than the ones that sampled them. Replaying the rollout's choices removes that part of the
mismatch, while the gate weights stay the trainer's own: they are recomputed from the live router at
the replayed experts (softmax over all experts, gathered at the replayed ones, renormalised when the
model's `norm_topk_prob` says so, exactly as the model computes them at its own top-k), so the router
still gets its gradient.

Mechanism (transformers 5.x Qwen3-MoE; `Qwen3MoeSparseMoeBlock` calls `self.gate(h)`, a
`Qwen3MoeTopKRouter` returning `(router_logits, top_k_weights, top_k_index)`, then
`self.experts(h, top_k_index, top_k_weights)`):

- the routes ride in the decoder's forward kwargs (`forward_kwargs(...)`, one `Replay` object). The
  decoder passes its kwargs to every decoder layer, and gradient checkpointing re-runs a layer with
  the same kwargs (`GradientCheckpointingLayer` checkpoints `partial(layer.__call__, **kwargs)`), so
  the recompute in backward replays the same experts as the forward did;
- a forward pre-hook on every decoder layer with an MoE block hands its router that layer's slice of
  the routes, and a forward hook clears it afterwards: the state lives for one layer call only;
- a forward hook on the router replaces its top-k indices and weights with the replayed ones.
  Hooks belong to the modules, so they also run under ZeRO-3 (whose own hooks gather the
  parameters; this one only reads the router's output) and under DeepSpeed's leaf modules.

Routes are (T, L, k): for each of the T tokens of the (packed) row, for each of the model's L decoder
layers (vLLM's layout; rows of non-MoE layers are ignored), the k experts, in a compact integer dtype
(`route_dtype`: uint8 when there are at most 256 experts).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from golong.world import World

ROUTES_KWARG = "golong_router_replay"  # the decoder forward kwarg that carries a `Replay`


def route_dtype(num_experts: int) -> torch.dtype:
    """The narrowest dtype that holds every expert id (uint8 up to 256 experts)."""
    if num_experts <= 256:
        return torch.uint8
    if num_experts <= 2**15:
        return torch.int16
    return torch.int32


class RouteExtras:
    """The planner's row extras for router replay (golong/trainer/packing.py `RowExtras`): the routes of
    the units each rank trains, fetched from the ranks that generated them (`fetch_arrays`, the
    collector's point-to-point `fetch_routes`), then laid out like the tokens of a micro-batch's units.
    The core types know nothing of routes: a unit's responses are found by `Group.response_index`."""

    def __init__(self, refs: list, fetch_arrays: Callable[[list[list]], list], rank: int):
        self.refs = refs  # (N,) where each of the step's responses' routes live (Rollouts.routes)
        self.fetch_arrays = fetch_arrays  # needed refs per rank -> this rank's arrays, in its order (collective)
        self.rank = rank
        self.routes: dict[int, torch.Tensor] = {}  # response index -> (P+R-1, L, k), for this rank's units

    def fetch(self, units_per_rank: list[list]) -> None:
        needed = [[int(i) for unit in units for i in unit.response_index] for units in units_per_rank]
        arrays = self.fetch_arrays([[self.refs[i] for i in idx] for idx in needed])
        self.routes = {i: torch.as_tensor(a) for i, a in zip(needed[self.rank], arrays, strict=True)}

    def pack(self, units: list) -> dict[str, torch.Tensor]:
        routes, counted = pack_unit_routes(units, self.routes)
        return {"routes": routes, "routes_counted": counted}


def pack_unit_routes(units: list, routes_of: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(routes (T, L, k), counted (T,) bool): the routes of prompt-once units (Groups) laid out like their
    tokens in the packed row (golong/trainer/batch.py), and which of them the rollout really routed.
    `routes_of[i]` holds response i's routes (i: Group.response_index).

    A response's routes cover its prompt and all but its last token (P+R-1 rows). A unit's row holds the
    prompt once (its routes taken from the unit's first response: vLLM computed that prompt once for
    the whole group) and then each response: its R-1 routed tokens and, for its last token, experts
    0..k-1. That token was never routed by the rollout, and its MoE output is never read (its hidden state
    predicts no trained token and no later token of its response attends to it), so any valid choice
    gives the same log-probs; `counted` keeps it out of the agreement counts.
    """
    rows, counted = [], []
    for unit in units:
        prompt_len = len(unit.prompt_ids)
        for n, (i, response) in enumerate(zip(unit.response_index.tolist(), unit.response_ids)):
            if i not in routes_of:
                raise ValueError(f"response {i} of a micro-batch has no routes: with router replay every rollout "
                                 "response needs its routes")
            routes = routes_of[i]
            if routes.dim() != 3 or routes.shape[0] != prompt_len + len(response) - 1:
                raise ValueError(f"routes have shape {tuple(routes.shape)}, expected ({prompt_len + len(response) - 1}, "
                                 "layers, top_k): one row per prompt and response token but the last (which the "
                                 "rollout never routed)")
            if n == 0:
                rows.append(routes[:prompt_len])
                counted.append(torch.ones(prompt_len, dtype=torch.bool))
            if len(response):
                rows += [routes[prompt_len:], unrouted_placeholder(routes, 1)]
                counted += [torch.ones(len(response) - 1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)]
    return torch.cat(rows), torch.cat(counted)


def unrouted_placeholder(routes: torch.Tensor, n: int) -> torch.Tensor:
    """(n, L, k) experts 0..k-1 for tokens the rollout never routed (their MoE output is never read)."""
    return torch.arange(routes.shape[2], dtype=routes.dtype).expand(n, *routes.shape[1:])


@dataclass
class RouterAgreement:
    """Counts of (token, MoE layer) choices where the trainer's own top-k set equals the rollout's."""

    matches: int = 0
    total: int = 0

    def add(self, own: torch.Tensor, given: torch.Tensor) -> None:
        """own, given: (N, k) expert ids of the same N tokens; order within the k does not matter."""
        same = (own.sort(dim=-1).values == given.sort(dim=-1).values).all(dim=-1)
        self.matches += int(same.sum())
        self.total += same.numel()

    def pop(self) -> tuple[int, int]:
        counts = (self.matches, self.total)
        self.matches = self.total = 0
        return counts


def global_agreement(agreement: RouterAgreement, world: World) -> float:
    """rollout/router_agreement over every rank's counted choices (and reset the counts); nan if none."""
    matches, total = world.all_reduce_sum(list(agreement.pop()))
    return matches / total if total > 0 else float("nan")


@dataclass
class Replay:
    """What one forward replays: the routes of its T tokens and where to count agreement."""

    routes: torch.Tensor  # (T, L, k) integer expert ids
    counted: torch.Tensor  # (T,) bool: tokens whose routes count in the agreement (not a sequence's last token)
    apply: bool = True  # False: only measure agreement, route as the model does
    agreement: RouterAgreement | None = None  # counts here in forwards without grad (the old-log-prob pass)


@dataclass
class _LayerReplay:
    """A router's share of the `Replay` while its decoder layer runs."""

    replay: Replay
    layer: int


def _is_moe_router(module: nn.Module) -> bool:
    # Qwen3MoeTopKRouter and its kin: a top_k, a num_experts and a (num_experts, hidden) weight
    # (under ZeRO-3 a partitioned weight is empty here; `ds_shape` keeps its full shape).
    if not all(hasattr(module, name) for name in ("top_k", "num_experts", "weight")):
        return False
    return len(getattr(module.weight, "ds_shape", module.weight.shape)) == 2


def moe_routers(model: nn.Module) -> dict[int, nn.Module]:
    """{decoder layer index: its MoE router} for a transformers decoder-only model."""
    layers = model.get_decoder().layers if hasattr(model, "get_decoder") else model.layers
    routers = {}
    for index, layer in enumerate(layers):
        gate = getattr(getattr(layer, "mlp", None), "gate", None)
        if gate is not None and _is_moe_router(gate):
            routers[index] = gate
    return routers


def _gate_weights(router: nn.Module, router_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, k) the router's weights at the given experts, computed as its forward computes them at its own
    top-k: softmax in fp32 over all experts, gathered, renormalised if norm_topk_prob, cast back."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)
    weights = probs.gather(-1, index)
    if getattr(router, "norm_topk_prob", False):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype)


def _router_hook(router: nn.Module, args, output):
    state: _LayerReplay | None = getattr(router, "_golong_replay", None)
    if state is None:
        return None
    router_logits, weights, own_index = output
    given = state.replay.routes[:, state.layer].to(device=own_index.device, dtype=torch.long)  # (N, k)
    if given.shape != own_index.shape:
        raise ValueError(f"router replay: routes give {tuple(given.shape)} (tokens, top_k) for layer {state.layer}, "
                         f"the router computed {tuple(own_index.shape)}")
    if state.replay.agreement is not None and not torch.is_grad_enabled():
        counted = state.replay.counted.to(own_index.device)
        state.replay.agreement.add(own_index[counted], given[counted])
    if not state.replay.apply:
        return None
    return router_logits, _gate_weights(router, router_logits, given), given


def _layer_pre_hook(router: nn.Module, layer_index: int):
    def hook(layer, args, kwargs):
        replay = kwargs.get(ROUTES_KWARG)
        router._golong_replay = _LayerReplay(replay, layer_index) if replay is not None else None
    return hook


def _layer_post_hook(router: nn.Module):
    def hook(layer, args, kwargs, output):
        router._golong_replay = None
    return hook


def forward_kwargs(replay: RouterReplay | None, routes: torch.Tensor | None, counted: torch.Tensor | None) -> dict:
    """`replay.forward_kwargs(...)`, refusing routes for a model without MoE layers."""
    if routes is None:
        return {}
    if replay is None:
        raise ValueError("routes were given for a model without MoE layers: router replay (rollout.router_replay) "
                         "needs an MoE model")
    return replay.forward_kwargs(routes, counted)


@dataclass
class RouterReplay:
    """Hooks on a model's MoE layers; `forward_kwargs` turns a micro-batch's routes into decoder kwargs."""

    num_layers: int  # decoder layers, the L of the routes
    moe_layers: list[int]  # indices of the layers with an MoE block
    top_k: int
    num_experts: int
    apply: bool = True  # False: routes are only measured against (rollout.record_routes without router_replay)
    agreement: RouterAgreement = field(default_factory=RouterAgreement)

    @classmethod
    def install(cls, model: nn.Module) -> RouterReplay | None:
        """Hook every MoE layer of `model` (a transformers causal LM); None if it has none. Idempotent."""
        existing = getattr(model, "_golong_router_replay", None)
        if existing is not None:
            return existing
        routers = moe_routers(model)
        if not routers:
            return None
        layers = model.get_decoder().layers
        for index, router in routers.items():
            router._golong_replay = None
            router.register_forward_hook(_router_hook)
            layers[index].register_forward_pre_hook(_layer_pre_hook(router, index), with_kwargs=True)
            layers[index].register_forward_hook(_layer_post_hook(router), with_kwargs=True)
        first = next(iter(routers.values()))
        replay = cls(num_layers=len(layers), moe_layers=sorted(routers), top_k=first.top_k,
                     num_experts=first.num_experts)
        model._golong_router_replay = replay
        return replay

    def forward_kwargs(self, routes: torch.Tensor | None, counted: torch.Tensor) -> dict:
        """Decoder kwargs that replay `routes` (T, L, k) on a packed row (or this rank's shard of it) whose
        tokens `counted` (T,) the rollout routed ({} when routes is None); with `apply` False they only
        count agreement."""
        if routes is None:
            return {}
        if routes.dim() != 3 or routes.shape[1:] != (self.num_layers, self.top_k):
            raise ValueError(f"routes have shape {tuple(routes.shape)}, expected (tokens, {self.num_layers}, "
                             f"{self.top_k}): (tokens, decoder layers, experts per token)")
        if counted.shape != routes.shape[:1]:
            raise ValueError(f"routes_counted has shape {tuple(counted.shape)}, expected ({routes.shape[0]},)")
        return {ROUTES_KWARG: Replay(routes=routes, counted=counted, apply=self.apply, agreement=self.agreement)}


def own_routes(model: nn.Module, input_ids: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """(T, L, k) the experts `model` itself routes the T tokens of `input_ids` (1, T) to (no grad);
    rows of non-MoE layers are 0. For tests and diagnostics."""
    routers = moe_routers(model)
    layers = len(model.get_decoder().layers)
    first = next(iter(routers.values()))
    routes = torch.zeros(input_ids.shape[1], layers, first.top_k, dtype=route_dtype(first.num_experts))
    handles = []
    for index, router in routers.items():
        def record(module, args, output, index=index):
            routes[:, index] = output[2].to(routes.dtype).cpu()
        handles.append(router.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.get_decoder()(input_ids=input_ids, use_cache=False, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return routes


# ------------------------------------------------------------------------------------------------
# The training loop's side (golong/trainer/loop.py calls these)


def configure_router_replay(replay: RouterReplay | None, rollout_cfg) -> None:
    """At start-up: replay the rollout's routes (rollout.router_replay) or only measure agreement
    with them (rollout.record_routes)."""
    if rollout_cfg.router_replay or rollout_cfg.record_routes:
        if replay is None:
            raise ValueError("rollout.router_replay / rollout.record_routes need an MoE policy (the trainer's model "
                             "has no MoE layers). Fix: set both to false")
        replay.apply = rollout_cfg.router_replay


def router_metrics(replay: RouterReplay | None, world: World) -> dict[str, float]:
    """`rollout/router_agreement`: share of (token, MoE layer) choices of the step where the trainer's own
    top-k set equals the rollout's, counted in the old-log-prob forwards (no grad; weights as at
    sampling; with replay on, each layer's input has gone through the replayed experts of the layers
    below). Collective. Empty when nothing was measured (no routes, no MoE)."""
    if replay is None:
        return {}
    value = global_agreement(replay.agreement, world)
    return {} if math.isnan(value) else {"rollout/router_agreement": value}
