"""Router replay (R3) in the trainer: the tiny Qwen3-MoE routes tokens to exactly the given experts,
in the forward and in gradient checkpointing's recompute, with the router's gradient kept."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs
from golong.trainer.batch import Group, pack_groups
from golong.world import current_world
from golong.replay.trainer import (RouteExtras, RouterReplay, global_agreement, moe_routers, own_routes,
                                         pack_unit_routes, route_dtype)


@pytest.fixture(scope="module")
def moe_path(tmp_path_factory) -> str:
    from golong.tiny_model import build_tiny_moe_model

    return build_tiny_moe_model(str(tmp_path_factory.mktemp("tiny_moe") / "model"))


def load(path: str, checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    from golong.trainer.engine import LogProbModel

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=PER_SEQUENCE)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    else:
        model.eval()
    return LogProbModel(model, temperature=1.0, chunk_size=64)


def samples() -> list[Group]:
    """Two one-response groups: responses 0 and 1 of a step."""
    return [Group(prompt_ids=[5, 6, 7, 8, 9], response_ids=[[10, 11, 12]], advantages=[1.0], response_index=[0]),
            Group(prompt_ids=[20, 21], response_ids=[[22, 23, 24, 25]], advantages=[-1.0], response_index=[1])]


def with_routes(units: list[Group], routes_of: dict) -> tuple:
    """(micro-batch, its routes, its routes_counted): the units packed, the routes laid out by router replay's packer."""
    mb = pack_groups(units)
    routes, counted = pack_unit_routes(units, routes_of)
    mb.extras = {"routes": routes, "routes_counted": counted}
    return mb, routes, counted


def inputs(mb, routes=None) -> dict:
    return dict(input_ids=mb.input_ids, position_ids=mb.position_ids, cu_seqlens=mb.cu_seqlens,
                max_seqlen=mb.max_seqlen, cu_segments=mb.cu_segments, logit_positions=mb.logit_positions,
                labels=mb.labels, routes=routes,
                routes_counted=None if routes is None else mb.extras.get("routes_counted", routed(mb)))


def routed(mb) -> torch.Tensor:
    """(T,) bool: every row token but each response's last (one response per unit here: a unit's last token)."""
    counted = torch.ones(mb.num_tokens, dtype=torch.bool)
    counted[mb.cu_segments[2::2].long() - 1] = False
    return counted


def trainer_routes(lp, mb) -> torch.Tensor:
    return own_routes(lp.model, mb.input_ids, position_ids=mb.position_ids,
                      **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen, mb.cu_segments))


def foreign(routes: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Other experts than `routes` for every token and layer (shifted by 3: still k distinct ones)."""
    return ((routes.long() + 3) % num_experts).to(routes.dtype)


def grads(lp) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in lp.named_parameters() if p.grad is not None}


def assert_same_logprobs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 log-probs of two code paths agree to a few ulps of their size (the order of float additions,
    e.g. thread-split reductions on CPU, may differ between them: never compared bitwise)."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * max(1.0, expected.abs().max().item()))


def test_tiny_moe_is_a_qwen3_moe_with_uint8_routes(moe_path):
    lp = load(moe_path)
    assert type(lp.model).__name__ == "Qwen3MoeForCausalLM"
    assert (lp.router_replay.num_layers, lp.router_replay.moe_layers) == (2, [0, 1])
    assert (lp.router_replay.top_k, lp.router_replay.num_experts) == (2, 8)
    assert route_dtype(8) == torch.uint8 and route_dtype(256) == torch.uint8 and route_dtype(257) == torch.int16
    assert trainer_routes(lp, pack_groups(samples())).dtype == torch.uint8


def test_replaying_the_trainers_own_routes_equals_the_ordinary_forward(moe_path):
    lp = load(moe_path)
    mb = pack_groups(samples())
    routes = trainer_routes(lp, mb)
    plain = lp(**inputs(mb))
    plain.sum().backward()
    plain_grads = grads(lp)
    lp.zero_grad()
    replayed = lp(**inputs(mb, routes))
    replayed.sum().backward()
    assert_same_logprobs(replayed, plain)
    replayed_grads = grads(lp)
    assert plain_grads.keys() == replayed_grads.keys()
    for name, g in plain_grads.items():
        torch.testing.assert_close(replayed_grads[name], g, rtol=0, atol=1e-7, msg=name)


def test_replayed_experts_are_used_per_token_and_the_router_keeps_its_gradient(moe_path):
    lp = load(moe_path)
    mb = pack_groups(samples())
    given = foreign(trainer_routes(lp, mb), 8)  # (T, L, k)
    seen = {}
    blocks = {i: layer.mlp for i, layer in enumerate(lp.model.model.layers)}
    hooks = [block.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, (args[0], out)))
             for i, block in blocks.items()]
    logp = lp(**inputs(mb, given))
    for h in hooks:
        h.remove()
    assert (logp - lp(**inputs(mb))).abs().max() > 1e-3  # other experts, other log-probs

    # Every token's MoE output, by hand in float64 from the block's input: the given experts, weighted by
    # the router's softmax at them, renormalised (norm_topk_prob), through each expert's SwiGLU.
    for i, block in blocks.items():
        x, out = seen[i]
        x, out = x[0].double(), out[0].double()  # (T, H)
        probs = torch.softmax(x @ block.gate.weight.double().T, dim=-1)  # (T, E)
        gate_up, down = block.experts.gate_up_proj.double(), block.experts.down_proj.double()
        for t in range(x.shape[0]):
            experts = given[t, i].long()
            w = probs[t, experts] / probs[t, experts].sum()
            expected = sum(w[j] * (down[e] @ (F.silu((gate_up[e] @ x[t]).chunk(2)[0]) * (gate_up[e] @ x[t]).chunk(2)[1]))
                           for j, e in enumerate(experts.tolist()))
            torch.testing.assert_close(out[t], expected, rtol=1e-4, atol=1e-6, msg=f"layer {i} token {t}")

    logp.sum().backward()
    for i, router in moe_routers(lp.model).items():
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0, f"layer {i} router has no gradient"


def test_checkpointing_recompute_replays_the_same_experts(moe_path):
    mb = pack_groups(samples())
    results = {}
    for checkpointing in (False, True):
        lp = load(moe_path, checkpointing)
        given = foreign(trainer_routes(lp, mb), 8)
        logp = lp(**inputs(mb, given))
        logp.sum().backward()
        results[checkpointing] = logp.detach(), grads(lp)
        if checkpointing:  # the check below can fail: without routes the recompute would route differently
            lp.zero_grad()
            lp(**inputs(mb)).sum().backward()
            own = grads(lp)
    (logp_plain, g_plain), (logp_ckpt, g_ckpt) = results[False], results[True]
    torch.testing.assert_close(logp_ckpt, logp_plain, rtol=0, atol=1e-6)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)
    router = "model.model.layers.1.mlp.gate.weight"
    assert not torch.allclose(own[router], g_ckpt[router])


def test_routes_survive_packing(moe_path):
    lp = load(moe_path)
    units = samples()
    routes_of = {i: foreign(trainer_routes(lp, pack_groups([u])), 8)[:-1]  # (P+R-1, L, k): the last token has none
                 for i, u in enumerate(units)}
    packed, routes, _ = with_routes(units, routes_of)
    assert routes.shape == (packed.num_tokens, 2, 2) and routes.dtype == torch.uint8
    start = 0
    for i, u in enumerate(units):  # laid out like input_ids: the response's rows, then its last token's placeholder
        assert torch.equal(routes[start:start + u.num_tokens - 1], routes_of[i])
        start += u.num_tokens
    one_by_one = torch.cat([lp(**inputs(mb, r)) for mb, r, _ in (with_routes([u], routes_of) for u in units)])
    torch.testing.assert_close(lp(**inputs(packed, routes)), one_by_one, rtol=0, atol=1e-5)
    assert not torch.allclose(lp(**inputs(packed)), one_by_one)  # the replayed routes mattered


def test_routes_survive_prompt_once_packing(moe_path):
    """A group [prompt, r_1, r_2, r_3] packed once: the prompt's routes once, each response's after it, and
    the same log-probs as each prompt + response replayed alone (foreign routes, so replay matters)."""
    lp = load(moe_path)
    prompt = [5, 9, 14, 3, 7, 11]
    responses = [[4, 8, 2], [6], [10, 12]]
    group = Group(prompt_ids=prompt, response_ids=responses, advantages=1.0, group_id=0)
    alone = group.split()
    prompt_routes = foreign(trainer_routes(lp, pack_groups(alone[:1])), 8)[:len(prompt)]
    routes_of = {}
    for i, unit in enumerate(alone):  # one rollout: the prompt's routes are the group's
        own = foreign(trainer_routes(lp, pack_groups([unit])), 8)[:-1]
        routes_of[i] = torch.cat([prompt_routes, own[len(prompt):]])
    mb, routes, counted = with_routes([group], routes_of)
    assert mb.num_tokens == len(prompt) + sum(map(len, responses))
    assert torch.equal(routes[:len(prompt)], prompt_routes)
    one_by_one = torch.cat([lp(**inputs(m, r)) for m, r, _ in (with_routes([u], routes_of) for u in alone)])
    torch.testing.assert_close(lp(**inputs(mb, routes)), one_by_one, rtol=0, atol=1e-5)
    assert not torch.allclose(lp(**inputs(mb)), one_by_one)  # the replayed routes mattered
    # each response's last token is the one position the rollout never routed
    assert torch.nonzero(~counted).flatten().tolist() == [8, 9, 11]


def test_route_extras_fetch_each_ranks_units_and_pack_them_like_the_tokens():
    """The planner's hook: every rank's needs (by response index) go to one fetch; this rank's arrays come
    back in its order, and pack lays a unit's routes out as the tokens (prompt once, from its first response)."""
    refs = [f"ref{i}" for i in range(4)]  # where each response's routes live (RouteRefs in a run)
    prompt = [1, 2, 3]
    arrays = {f"ref{i}": torch.full((len(prompt) + 2 - 1, 2, 2), i, dtype=torch.uint8) for i in range(4)}
    asked = []

    def fetch_arrays(needed):
        asked.append(needed)
        return [arrays[ref] for ref in needed[1]]  # this is rank 1

    group = Group(prompt_ids=prompt, response_ids=[[7, 8]] * 4, advantages=0.0, group_id=0,
                  response_index=[0, 1, 2, 3])
    rank0, rank1 = group.select([0, 3]), group.select([2, 1])
    extras = RouteExtras(refs, fetch_arrays, rank=1)
    extras.fetch([[rank0], [rank1]])
    assert asked == [[["ref0", "ref3"], ["ref2", "ref1"]]]
    packed = extras.pack([rank1])
    assert packed["routes"][:, 0, 0].tolist() == [2, 2, 2, 2, 0, 1, 0]  # prompt from response 2; placeholders 0
    assert packed["routes_counted"].tolist() == [True] * 4 + [False, True, False]
    with pytest.raises(ValueError, match="response 0 of a micro-batch has no routes"):
        extras.pack([rank0])


def test_routes_shard_with_the_row_under_sequence_parallelism():
    """[SP] pad_inputs/shard_inputs split routes like input_ids; fillers get placeholder routes, never counted.
    Tested here at the sharding level; the SP equivalence test runs dense models (router replay and SP
    together on an MoE model have not run end to end)."""
    from golong.trainer.sequence_parallel import pad_inputs, shard_inputs
    from golong.world import ParallelLayout

    prompt, responses = [5, 9, 14], [[4, 8, 2], [6, 1]]
    group = Group(prompt_ids=prompt, response_ids=responses, advantages=1.0, group_id=0)
    routes_of = {i: torch.randint(0, 8, (len(prompt) + len(r) - 1, 2, 2), dtype=torch.uint8) for i, r in enumerate(responses)}
    mb, routes, _ = with_routes([group], routes_of)  # 8 tokens
    padded = pad_inputs(inputs(mb, routes), 3)  # 9 tokens: one filler
    assert padded["routes"].shape[0] == 9 and padded["routes_counted"].tolist() == [True] * 5 + [False, True, False, False]
    for rank in range(3):
        shard = shard_inputs(padded, ParallelLayout(world_size=3, rank=rank, sp=3))
        torch.testing.assert_close(shard.inputs["routes"], padded["routes"][3 * rank:3 * rank + 3])
        assert shard.inputs["routes_counted"].tolist() == padded["routes_counted"][3 * rank:3 * rank + 3].tolist()
        assert shard.inputs["input_ids"].shape[1] == shard.inputs["routes"].shape[0]


def test_router_agreement_counts_token_layer_choices_on_forwards_without_grad(moe_path):
    lp = load(moe_path)
    mb = pack_groups(samples())  # 14 tokens, 2 sequences: 12 routed tokens x 2 layers = 24 choices
    routes = trainer_routes(lp, mb)
    with torch.no_grad():
        lp(**inputs(mb, routes))
    assert (lp.router_replay.agreement.matches, lp.router_replay.agreement.total) == (24, 24)
    assert global_agreement(lp.router_replay.agreement, current_world()) == 1.0
    assert lp.router_replay.agreement.total == 0  # popped

    changed = routes.clone()
    changed[[1, 2, 9], 1] = foreign(routes[[1, 2, 9], 1], 8)  # layer 1 of three routed tokens
    changed[7] = foreign(routes[7], 8)  # token 7 ends sequence 1: never routed by the rollout, not counted
    changed[0, 1] = routes[0, 1].flip(-1)  # the same set in another order agrees
    lp.router_replay.apply = False  # measure only: the forward routes as the model does
    with torch.no_grad():
        measured = lp(**inputs(mb, changed))
    assert_same_logprobs(measured, lp(**inputs(mb)))
    assert global_agreement(lp.router_replay.agreement, current_world()) == pytest.approx(21 / 24)
    lp(**inputs(mb, changed))  # with grad: not counted
    assert lp.router_replay.agreement.total == 0


def test_bad_routes_are_refused(moe_path, tiny_model_path):
    unit = Group(prompt_ids=[1, 2, 3], response_ids=[[4, 5]], advantages=0.0)
    with pytest.raises(ValueError, match=r"expected \(4, layers, top_k\)"):
        pack_unit_routes([unit], {0: torch.zeros(5, 2, 2, dtype=torch.uint8)})
    pair = Group(prompt_ids=[1], response_ids=[[2], [2]], advantages=0.0)
    with pytest.raises(ValueError, match="every rollout response needs its routes"):
        pack_unit_routes([pair], {0: torch.zeros(1, 2, 2, dtype=torch.uint8)})
    lp = load(moe_path)
    mb = pack_groups(samples())
    with pytest.raises(ValueError, match=r"expected \(tokens, 2, 2\)"):
        lp(**inputs(mb, torch.zeros(mb.num_tokens, 1, 2, dtype=torch.uint8)))
    dense = load(tiny_model_path)
    assert dense.router_replay is None
    with pytest.raises(ValueError, match="rollout.router_replay"):
        dense(**inputs(mb, torch.zeros(mb.num_tokens, 2, 2, dtype=torch.uint8)))
    assert RouterReplay.install(lp.model) is lp.router_replay  # idempotent: hooks installed once


@pytest.mark.slow
def test_zero3_engine_with_checkpointing_replays_like_plain_transformers(moe_path, tmp_path):
    """PolicyEngine (ZeRO-3, MoE blocks as leaves, gradient checkpointing) replaying routes gives the
    log-probs and gradients of plain transformers replaying them (tests/dist/engine_router_replay.py)."""
    import os

    from conftest import REPO
    from test_engine import run_python

    out = tmp_path / "replay.pt"
    run_python(os.path.join(REPO, "tests", "dist", "engine_router_replay.py"), [moe_path, str(out)])
    d = torch.load(out, weights_only=True)
    assert all(d["checkpointing"])  # the backward recomputed every layer
    assert_same_logprobs(d["own"], d["plain"])  # own routes replayed == ordinary forward
    assert d["own_agreement"] == 1.0 and d["foreign_agreement"] == 0.0
    torch.testing.assert_close(d["foreign"], d["reference_foreign"], rtol=0, atol=1e-5)
    assert (d["foreign"] - d["plain"]).abs().max() > 1e-3  # the routes mattered
    largest = max(g.abs().max().item() for g in d["reference_grads"].values())
    assert d["grads"].keys() == d["reference_grads"].keys()
    for name, g in d["reference_grads"].items():
        torch.testing.assert_close(d["grads"][name], g, rtol=1e-4, atol=1e-6 * largest * 10, msg=name)
    assert d["grads"]["model.layers.1.mlp.gate.weight"].abs().sum() > 0
