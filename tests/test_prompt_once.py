"""Prompt-once group training: the packed layout, exact attention (SDPA path, and flex_attention's mask
on CPU), log-probs/entropy/gradients equal to each prompt + response alone, group planning, and the
group-token-mean loss (Eq. 4) by hand."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golong.trainer.attention import (FLEX_PROMPT_ONCE, PER_SEQUENCE, flex_prompt_once_attention,
                                      per_sequence_attention, resolve_attention)
from golong.trainer.batch import Group, pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.engine import LogProbModel
from golong.trainer.loss import LossDenominator, LossInputs, aggregation_weights, policy_loss
from golong.trainer.packing import plan_micro_batches, plan_units
from golong.world import current_world

TEMPERATURE = 0.7


def group(prompt_len, response_lens, group_id, seed, vocab=500, advantages=None) -> Group:
    """One prompt group: one random prompt, one random response per length."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (prompt_len,), generator=g).numpy()
    advantages = advantages or [0.5 - i for i in range(len(response_lens))]
    return Group(prompt_ids=prompt, response_ids=[torch.randint(0, vocab, (r,), generator=g).numpy() for r in response_lens],
                 advantages=advantages[:len(response_lens)], group_id=group_id)


# ------------------------------------------------------------------------------------------------
# Layout


def test_pack_groups_by_hand():
    ab = Group(prompt_ids=[10, 11, 12], response_ids=[[20, 21], [30]], advantages=[1.0, -1.0],
               rollout_logprobs=[[-1.0, -2.0], np.array([-3.0])], loss_weights=[1.0, 0.0], group_id=7)
    c = Group(prompt_ids=[40], response_ids=[[50, 51, 52]], advantages=0.5, rollout_logprobs=[[-4.0, -5.0, -6.0]],
              group_id=9)
    assert (len(ab), ab.num_tokens, ab.response_lengths.tolist(), ab.in_loss.tolist()) == (2, 6, [2, 1], [True, False])
    mb = pack_groups([ab, c])
    assert mb.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 40, 50, 51, 52]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3]]  # b continues from the prompt, not from a
    assert mb.cu_seqlens.tolist() == [0, 6, 10] and mb.cu_seqlens.dtype == torch.int32
    assert mb.cu_segments.tolist() == [0, 3, 5, 6, 7, 10] and mb.cu_segments.dtype == torch.int32
    assert mb.max_seqlen == 6 and mb.max_segment_len == 3
    assert mb.logit_positions.tolist() == [2, 3, 2, 6, 7, 8]  # b's token is predicted by the prompt's last token
    assert mb.labels.tolist() == [20, 21, 30, 50, 51, 52]
    assert mb.advantages.tolist() == [1.0, 1.0, -1.0, 0.5, 0.5, 0.5]
    assert mb.loss_mask.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert mb.seq_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert mb.group_ids.tolist() == [7, 7, 7, 9, 9, 9]
    assert mb.rollout_logprobs.tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    assert mb.num_tokens == mb.num_real_tokens == 10 and mb.num_responses == 3
    # share_prompt off is the special case of one response per unit
    one_each = pack_groups(ab.split())
    assert one_each.input_ids.tolist() == [[10, 11, 12, 20, 21, 10, 11, 12, 30]]
    assert one_each.cu_segments.tolist() == [0, 3, 5, 8, 9]
    # a unit has one prompt by construction: two prompts (a 2-D prompt_ids) or float ids are refused
    with pytest.raises(ValueError, match="prompt_ids must be a 1-D sequence of token ids"):
        Group(prompt_ids=[[10, 11, 12], [40, 41, 42]], response_ids=[[20]], advantages=1.0)
    with pytest.raises(ValueError, match="prompt_ids must be a 1-D sequence of token ids"):
        Group(prompt_ids=[10.0, 11.5], response_ids=[[20]], advantages=1.0)


# ------------------------------------------------------------------------------------------------
# Attention: the SDPA path and flex_attention's mask against a dense masked reference (float64)


def dense_reference(q, k, v, cu_units, cu_segments, scale):
    """Attention with an explicit [T, T] mask built token by token from the rules."""
    T = q.shape[2]
    unit = [max(i for i, b in enumerate(cu_units[:-1]) if b <= t) for t in range(T)]
    seg = [max(i for i, b in enumerate(cu_segments[:-1]) if b <= t and cu_segments[i + 1] > t) for t in range(T)]
    prompt = [cu_segments[seg[t]] in cu_units[:-1] for t in range(T)]
    mask = torch.tensor([[unit[i] == unit[j] and j <= i and (prompt[j] or seg[i] == seg[j]) for j in range(T)]
                         for i in range(T)])
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                          attn_mask=mask, scale=scale).transpose(1, 2)


class _Module(torch.nn.Module):
    pass


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1), (6, 2), (1, 1)])
def test_attention_paths_equal_dense_reference(heads, kv_heads):
    mb = pack_groups([group(5, [3, 1, 4], 0, seed=0), group(2, [6], 1, seed=1), group(4, [1, 2], 2, seed=2)])
    T = mb.num_tokens
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, T, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, kv_heads, T, 8, generator=g, dtype=torch.float64) for _ in range(2))
    expected = dense_reference(q, k, v, mb.cu_seqlens.tolist(), mb.cu_segments.tolist(), 0.3)
    kwargs = dict(scaling=0.3, cu_seq_lens_q=mb.cu_seqlens, cu_segments=mb.cu_segments)
    sdpa, _ = per_sequence_attention(_Module().eval(), q, k, v, None, **kwargs)
    assert (sdpa - expected).abs().max() < 1e-12
    # flex_attention runs forward only on CPU (eagerly): this checks the block mask the CUDA path uses
    flex, _ = flex_prompt_once_attention(_Module().eval(), q.float(), k.float(), v.float(), None, **kwargs)
    assert (flex.double() - expected).abs().max() < 1e-5
    # the reference is not blind: attending causally over each whole unit differs
    leaky = dense_reference(q, k, v, mb.cu_seqlens.tolist(), mb.cu_seqlens.tolist(), 0.3)
    assert (leaky - expected).abs().max() > 1e-2


def test_resolve_attention_with_share_prompt():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu, share_prompt=True) == PER_SEQUENCE
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_attention("flex", cpu, share_prompt=True)
    assert FLEX_PROMPT_ONCE != PER_SEQUENCE


def test_config_refuses_unit_causal_attention_with_share_prompt():
    from golong.config import Config
    from golong.configlib import ConfigError

    cfg = Config()
    cfg.model.path, cfg.model.attention = "m", "flash_attention_2"
    with pytest.raises((ConfigError, ValueError), match="model.attention.*share_prompt"):
        cfg.validate()
    cfg.trainer.share_prompt = False
    cfg.validate()


# ------------------------------------------------------------------------------------------------
# The real tiny model: packed groups against each prompt + response alone (fp32)


@pytest.fixture(scope="module")
def models(tiny_model_path):
    from transformers import AutoModelForCausalLM

    packed = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32, attn_implementation=PER_SEQUENCE)
    alone = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32, attn_implementation="eager")
    return LogProbModel(packed, TEMPERATURE, chunk_size=5), alone


def alone_logprobs(model, prompt_ids, response_ids):
    """Plain transformers on prompt + response alone: (log-probs, entropy) of the response tokens."""
    response = torch.from_numpy(response_ids.astype(np.int64))
    ids = torch.cat([torch.from_numpy(prompt_ids.astype(np.int64)), response])[None]
    logits = model(ids).logits[0] / TEMPERATURE
    log_p = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)
    return log_p.gather(1, response[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)


def packed_logprobs(model, mb):
    return model(mb.input_ids, mb.position_ids, mb.cu_seqlens, mb.max_seqlen, mb.cu_segments,
                 mb.logit_positions, mb.labels, with_entropy=True)


CASES = {
    # groups whose responses have different lengths, one of length 1, two prompts in one micro-batch
    "two_groups_one_micro_batch": [group(9, [7, 1, 3, 12], 0, seed=0), group(4, [2, 5], 1, seed=1)],
    # one group split into several units (each repeating the prompt) by a small token budget
    "split_group": [group(6, [8, 1, 5, 7, 2, 9], 0, seed=2)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_groups_equal_each_response_alone(models, case):
    packed_model, alone_model = models
    max_tokens = 20 if case == "split_group" else 1000
    units = plan_units(CASES[case], max_tokens)
    if case == "split_group":
        assert len(units) >= 3 and all(u.num_tokens <= max_tokens for u in units)
    else:
        assert len(units) == 2
    mb = pack_groups(units)
    weights = torch.randn(mb.labels.numel(), generator=torch.Generator().manual_seed(3))

    packed_model.zero_grad()
    logp, entropy = packed_logprobs(packed_model, mb)
    (weights * logp + 0.1 * weights.flip(0) * entropy).sum().backward()

    alone_model.zero_grad()
    ref_logp, ref_entropy = map(torch.cat, zip(*(alone_logprobs(alone_model, u.prompt_ids, r)
                                                 for u in units for r in u.response_ids)))
    (weights * ref_logp + 0.1 * weights.flip(0) * ref_entropy).sum().backward()

    assert (logp - ref_logp).abs().max() <= 1e-5
    assert (entropy - ref_entropy).abs().max() <= 1e-5
    ref_grads = dict(alone_model.named_parameters())
    largest = max(p.grad.abs().max().item() for p in ref_grads.values())
    assert largest > 1e-3
    for name, p in packed_model.model.named_parameters():
        assert torch.allclose(p.grad, ref_grads[name].grad, atol=1e-6 * largest * 10, rtol=1e-4), name
    # prompt-once computes fewer tokens than one sequence per response
    assert mb.num_tokens < pack_groups([one for u in units for one in u.split()]).num_tokens


def test_unit_causal_attention_is_refused_for_groups(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = LogProbModel(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32,
                                                              attn_implementation="sdpa"), 1.0, 8)
    mb = pack_groups([group(3, [2, 2], 0, seed=0)])
    with pytest.raises(ValueError, match="share_prompt"):
        packed_logprobs(model, mb)


# ------------------------------------------------------------------------------------------------
# Planning


def members(units: list[Group]) -> list[tuple[int, list[int]]]:
    """Each unit as (group_id, its responses' positions in the group)."""
    return [(u.group_id, u.response_index.tolist()) for u in units]


def test_plan_units_groups_and_splits():
    groups = [group(10, [30, 5, 20, 1, 25], 0, seed=0), group(3, [4, 4], 1, seed=1),
              Group(prompt_ids=[1, 2], response_ids=[[3]], advantages=1.0)]  # no group_id: alone
    units = plan_units(groups, max_tokens=50)
    assert sorted((g, i) for g, idx in members(units) for i in idx) == \
        [(-1, 0)] + [(0, i) for i in range(5)] + [(1, 0), (1, 1)]
    assert (1, [0, 1]) in members(units) and (-1, [0]) in members(units)
    group0 = [u for u in units if u.group_id == 0]
    assert len(group0) == 3  # 81 response tokens in a budget of 50 - 10 per unit: 3 units
    assert all(u.num_tokens <= 50 for u in group0)
    for u in group0:  # a unit of a group: the group's prompt (the same memory), its responses, advantages, weights
        assert np.shares_memory(u.prompt_ids, groups[0].prompt_ids)
        assert [r.tolist() for r in u.response_ids] == [groups[0].response_ids[i].tolist() for i in u.response_index]
        assert u.advantages.tolist() == groups[0].advantages[u.response_index].tolist()
    assert members(plan_units(groups, 50, share_prompt=False)) == \
        [(0, [i]) for i in range(5)] + [(1, [0]), (1, [1]), (-1, [0])]
    # a response too long to share its prompt with anything gets a unit of its own
    big = group(10, [45, 3, 2], 0, seed=0)
    assert sorted(idx for _, idx in members(plan_units([big], 50))) == [[0], [1, 2]]
    # the responses' positions must be one per response (the planner and router replay find responses by them)
    with pytest.raises(ValueError, match="response_index has shape"):
        dataclasses.replace(big, response_index=[0, 1])


def test_plan_balances_groups_over_ranks():
    groups = [group(20 + 7 * g, [3 + g, 9, 1, 4], g, seed=g) for g in range(12)]
    units = plan_units(groups, 64)
    plan = plan_micro_batches([u.num_tokens for u in units], 64, 2)
    assert len({len(rank) for rank in plan}) == 1
    placed = sorted((units[u].group_id, i) for rank in plan for mb in rank for u in mb for i in units[u].response_index)
    assert placed == [(g, i) for g in range(12) for i in range(4)]


# ------------------------------------------------------------------------------------------------
# group-token-mean (Eq. 4) by hand


def tokens_by_group(denom: LossDenominator) -> dict[int, float]:
    return dict(zip(denom.group_ids.tolist(), denom.group_tokens.tolist()))


def on_tokens(mb, logp, old_logp, denom: LossDenominator) -> LossInputs:
    """The loss's view of a packed micro-batch's tokens (as PolicyEngine.forward_backward builds it)."""
    return LossInputs(logp=logp, old_logp=old_logp, advantages=mb.advantages, token_mask=mb.loss_mask,
                      seq_index=mb.seq_index, group_index=denom.group_index(mb.group_ids, mb.loss_mask))


def test_group_token_mean_by_hand():
    # group A: responses of 1 and 15 tokens; group B: 2 and 3 tokens; every token's loss is 1
    groups = [group(2, [1, 15], 10, seed=0), group(2, [2, 3], 11, seed=1)]
    mb = pack_groups(groups)
    for mode, weight_of_15 in (("group-token-mean", 0.5 * 15 / 16), ("token-mean", 15 / 21)):
        denom = LossDenominator.build(groups, mode, world=current_world())
        w = aggregation_weights(mb.loss_mask, mb.seq_index, denom, denom.group_index(mb.group_ids, mb.loss_mask))
        assert w[mb.seq_index == 1].sum().item() == pytest.approx(weight_of_15)
        assert w.sum().item() == pytest.approx(1.0)
    denom = LossDenominator.build(groups, "group-token-mean", world=current_world())
    assert denom.value == 2 and tokens_by_group(denom) == {10: 16.0, 11: 5.0}
    # the 15-token response weighs 0.47 under Eq. 4 and 0.71 under token-mean (issue's example, in K)
    assert 0.5 * 15 / 16 == pytest.approx(0.469, abs=1e-3) and 15 / 21 == pytest.approx(0.714, abs=1e-3)

    # the loss by hand: l_t = -A rho with rho = 1 (on-policy); loss = mean over groups of sum / group tokens
    logp = torch.zeros(mb.labels.numel(), requires_grad=True)
    loss = policy_loss(on_tokens(mb, logp, logp.detach(), denom), PolicyLossConfig(), IcePopConfig(mode="off"), denom)
    adv = [a for g in groups for a in g.advantages.tolist()]
    by_hand = 0.5 * (-(adv[0] * 1 + adv[1] * 15) / 16 - (adv[2] * 2 + adv[3] * 3) / 5)
    assert loss.item() == pytest.approx(by_hand)
    # a response with loss_weight 0 leaves its group's count; a group with none in the loss leaves the groups
    groups[1] = dataclasses.replace(groups[1], loss_weights=[1.0, 0.0])
    masked = LossDenominator.build(groups + [group(2, [], 12, seed=2)], "group-token-mean",  # + a group of no responses
                                   world=current_world())
    assert tokens_by_group(masked) == {10: 16.0, 11: 2.0}
    off = [Group(prompt_ids=[1], response_ids=[[2, 3]], advantages=1.0, loss_weights=0.0, group_id=13)]
    assert LossDenominator.build(groups + off, "group-token-mean", world=current_world()).value == 2


def test_group_token_mean_is_split_invariant_over_micro_batches():
    groups = [group(3, [1, 15, 4], 0, seed=0), group(5, [2, 3], 1, seed=1)]
    where = [(g, k) for g in groups for k in range(len(g))]  # response i of the step: (its group, its position)
    denom = LossDenominator.build(groups, "group-token-mean", world=current_world())
    g = torch.Generator().manual_seed(0)
    per_response = [torch.randn(len(r), generator=g) for grp in groups for r in grp.response_ids]

    def unit(indices):  # responses of one group, by their index in the step
        assert len({id(where[i][0]) for i in indices}) == 1
        return where[indices[0]][0].select([where[i][1] for i in indices])

    def loss_of(units):
        total = 0.0
        for unit_list in units:
            mb = pack_groups([unit(u) for u in unit_list])
            logp = torch.cat([per_response[i] for u in unit_list for i in u])
            loss = policy_loss(on_tokens(mb, logp, logp - 0.1, denom), PolicyLossConfig(), IcePopConfig(mode="off"), denom)
            total += loss.item()
        return total

    whole = loss_of([[[0, 1, 2], [3, 4]]])
    split = loss_of([[[1]], [[0, 2], [3]], [[4]]])  # group 0 split into two units in two micro-batches
    assert split == pytest.approx(whole, rel=1e-6)


def test_group_token_mean_needs_group_ids():
    with pytest.raises(ValueError, match="group_id"):
        LossDenominator.build([Group(prompt_ids=[1], response_ids=[[2]], advantages=1.0)], "group-token-mean",
                              world=current_world())
