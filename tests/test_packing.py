"""Packing: the micro-batch plan, the packed row, and packed attention equal to running each sequence alone."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from golong.data.prompts import PromptIds
from golong.rollout.collect import Rollouts
from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs, resolve_attention
from golong.trainer.batch import Group, PackedMicroBatch, pack_groups
from golong.trainer.logprobs import token_logprobs
from golong.trainer.packing import plan_micro_batches, plan_units


def sequence(prompt, response, advantage, rollout_logprobs=None, loss_weight=1.0, group_id=-1) -> Group:
    """One prompt and one response: packed, one plain `prompt + response` sequence."""
    return Group(prompt_ids=prompt, response_ids=[response], advantages=advantage,
                 rollout_logprobs=None if rollout_logprobs is None else [rollout_logprobs],
                 loss_weights=loss_weight, group_id=group_id)


def long_tailed_lengths(n: int, seed: int) -> list[int]:
    """Log-uniform lengths from 100 to 25,600 tokens (the paper's 0.1K-256K, scaled down 10x)."""
    rng = random.Random(seed)
    return [int(100 * 256 ** rng.random()) for _ in range(n)]


def check_plan(plan, lengths, max_tokens, dp_size):
    assert len(plan) == dp_size
    assert len({len(rank) for rank in plan}) == 1, "every rank must run the same number of micro-batches"
    placed = sorted(i for rank in plan for mb in rank for i in mb)
    assert placed == list(range(len(lengths))), "each sequence exactly once"
    for rank in plan:
        for mb in rank:
            assert sum(lengths[i] for i in mb) <= max_tokens or len(mb) == 1


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dp_size", [1, 2, 8])
def test_plan_long_tailed_batch_is_valid_and_balanced(seed, dp_size):
    lengths = long_tailed_lengths(256, seed)
    max_tokens = 32_768
    plan = plan_micro_batches(lengths, max_tokens, dp_size)
    check_plan(plan, lengths, max_tokens, dp_size)
    loads = [sum(lengths[i] for mb in rank for i in mb) for rank in plan]
    assert max(loads) <= 1.10 * min(loads)
    # few micro-batches: at most one more than the token budget strictly needs on the busiest rank
    assert len(plan[0]) <= -(-max(loads) // max_tokens) + 1


def test_plan_by_hand():
    # LPT onto ranks: 9 -> r0, 7 -> r1, 5 -> r1 (12), 4 -> r0 (13), 2 -> r1 (14), 1 -> r0 (14).
    # Budget 10, 2 micro-batches each; longest first into the least-loaded one that fits:
    # r0: 9 -> a, 4 -> b, 1 -> b (5 < 9);  r1: 7 -> a, 5 -> b, 2 -> b (5 < 7).
    lengths = [5, 9, 2, 7, 4, 1]
    assert plan_micro_batches(lengths, 10, 2) == [[[1], [4, 5]], [[3], [0, 2]]]


def test_plan_oversized_sequence_sits_alone():
    lengths = [50, 3, 3, 3]
    plan = plan_micro_batches(lengths, 10, 1)
    assert plan == [[[0], [1, 2, 3]]]


def test_plan_more_ranks_than_sequences_gives_empty_micro_batches():
    plan = plan_micro_batches([4, 6, 5], 100, 4)
    assert plan == [[[1]], [[2]], [[0]], [[]]]


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_tokens"):
        plan_micro_batches([3], 0, 1)
    with pytest.raises(ValueError, match="at least one token"):
        plan_micro_batches([3, 0], 10, 1)


def test_pack_by_hand():
    a = sequence([10, 11], [12, 13, 14], 1.5, rollout_logprobs=[-1.0, -2.0, -3.0])
    b = sequence([20, 21, 22], [23], -0.5, rollout_logprobs=np.array([-4.0]), loss_weight=0.0)
    mb = pack_groups([a, b])
    assert mb.input_ids.tolist() == [[10, 11, 12, 13, 14, 20, 21, 22, 23]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]]
    assert mb.cu_seqlens.tolist() == [0, 5, 9] and mb.cu_seqlens.dtype == torch.int32
    assert mb.max_seqlen == 5
    assert mb.logit_positions.tolist() == [1, 2, 3, 7]  # the token before each response token
    assert mb.labels.tolist() == [12, 13, 14, 23]
    assert mb.advantages.tolist() == [1.5, 1.5, 1.5, -0.5]
    assert mb.loss_mask.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert mb.seq_index.tolist() == [0, 0, 0, 1]
    assert mb.rollout_logprobs.tolist() == [-1.0, -2.0, -3.0, -4.0]
    assert mb.num_tokens == mb.num_real_tokens == 9


def test_pack_empty_gives_zero_weight_filler():
    mb = pack_groups([])
    assert mb.num_tokens == 2 and mb.num_real_tokens == 0
    assert mb.labels.numel() == 1 and mb.loss_mask.tolist() == [0.0]


def test_pack_without_rollout_logprobs_and_bad_groups():
    mb = pack_groups([sequence([1], [2, 3], 1.0), sequence([4], [5], 1.0, rollout_logprobs=np.zeros(1))])
    assert mb.rollout_logprobs is None
    with pytest.raises(ValueError, match="one per response token"):
        sequence([1], [2, 3], 1.0, rollout_logprobs=np.zeros(3))
    with pytest.raises(ValueError, match="at least one prompt token"):
        sequence([], [2], 1.0)
    with pytest.raises(ValueError, match="prompt_ids must be a 1-D sequence of token ids"):
        sequence([[1, 2], [3, 4]], [2], 1.0)  # two prompts: a Group has one
    with pytest.raises(ValueError, match="each response must be a 1-D sequence of token ids"):
        sequence([1], [2.5, 3.0], 1.0)  # not token ids
    with pytest.raises(ValueError, match="response_index has shape"):
        Group(prompt_ids=[1], response_ids=[[2], [3]], advantages=1.0, response_index=[0])


def reference_pack(units: list[Group]) -> PackedMicroBatch:
    """The packed layout token by token in Python lists, straight from batch.py's docstring: unit after unit
    [prompt, r_1, ..., r_k]; positions 0.. over the prompt, each response continuing from the prompt length;
    a response's first token predicted by its prompt's last token, every later one by its previous token."""
    ids, positions, cu_seqlens, cu_segments = [], [], [0], [0]
    logit_positions, labels, advantages, loss_mask, seq_index, group_ids, rollout = [], [], [], [], [], [], []
    responses = 0
    for unit in units:
        prompt = unit.prompt_ids.tolist()
        prompt_last = len(ids) + len(prompt) - 1
        ids += prompt
        positions += list(range(len(prompt)))
        cu_segments.append(len(ids))
        for k, response in enumerate(unit.response_ids):
            start = len(ids)
            for j, token in enumerate(response.tolist()):
                ids.append(token)
                positions.append(len(prompt) + j)
                logit_positions.append(prompt_last if j == 0 else start + j - 1)
                labels.append(token)
                advantages.append(float(unit.advantages[k]))
                loss_mask.append(float(unit.loss_weights[k]))
                seq_index.append(responses)
                group_ids.append(unit.group_id)
                rollout.append(float(unit.rollout_logprobs[k][j]))
            cu_segments.append(len(ids))
            responses += 1
        cu_seqlens.append(len(ids))

    def t(values, dtype):
        return torch.tensor(values, dtype=dtype)

    return PackedMicroBatch(
        input_ids=t([ids], torch.int64), position_ids=t([positions], torch.int64),
        cu_seqlens=t(cu_seqlens, torch.int32), max_seqlen=max(b - a for a, b in zip(cu_seqlens, cu_seqlens[1:])),
        cu_segments=t(cu_segments, torch.int32), max_segment_len=max(b - a for a, b in zip(cu_segments, cu_segments[1:])),
        logit_positions=t(logit_positions, torch.int64), labels=t(labels, torch.int64),
        advantages=t(advantages, torch.float32), loss_mask=t(loss_mask, torch.float32),
        seq_index=t(seq_index, torch.int64), group_ids=t(group_ids, torch.int64),
        rollout_logprobs=t(rollout, torch.float32), num_real_tokens=len(ids), num_responses=responses)


def random_units(seed: int) -> list[Group]:
    """Several units of random groups: prompts of 1-6 tokens, 1-4 responses of 0-5 tokens (zero-length ones
    included), loss weights 0 or 1; some units of one group (sharing its prompt view), some whole groups."""
    rng = np.random.default_rng(seed)
    units = []
    for group_id in range(int(rng.integers(1, 6))):
        k = int(rng.integers(1, 5))
        responses = [rng.integers(0, 500, int(rng.integers(0, 6))) for _ in range(k)]
        group = Group(prompt_ids=rng.integers(0, 500, int(rng.integers(1, 7))), response_ids=responses,
                      advantages=rng.normal(size=k), loss_weights=rng.integers(0, 2, k),
                      rollout_logprobs=[-rng.random(len(r)) for r in responses],
                      group_id=int(rng.choice([-1, group_id, 100 + group_id])))
        if k > 1 and rng.random() < 0.5:  # split into two units, responses out of order
            order = rng.permutation(k).tolist()
            units += [group.select(order[:k // 2]), group.select(order[k // 2:])]
        else:
            units.append(group)
    return [units[i] for i in rng.permutation(len(units))]


@pytest.mark.parametrize("seed", range(20))
def test_pack_groups_equals_a_token_by_token_reference(seed):
    units = random_units(seed)
    packed, expected = pack_groups(units), reference_pack(units)
    for f in dataclasses.fields(PackedMicroBatch):
        got, want = getattr(packed, f.name), getattr(expected, f.name)
        if isinstance(want, torch.Tensor):
            assert got.dtype == want.dtype and torch.equal(got, want), f.name
        else:
            assert got == want, f.name
    assert packed.num_tokens == sum(u.num_tokens for u in units)


def test_random_units_reach_the_edge_cases():
    units = [u for seed in range(20) for u in random_units(seed)]
    assert any(len(r) == 0 for u in units for r in u.response_ids)  # zero-length responses
    assert any(u.loss_weights.min() == 0 for u in units) and any(u.loss_weights.max() == 1 for u in units)
    assert any(len(u) > 1 for u in units) and any(u.group_id == -1 for u in units)
    assert any(a is not b and a.prompt_ids is b.prompt_ids for a in units for b in units)  # units of one group
    assert all(len(random_units(seed)) > 1 for seed in range(3))


def test_from_rollouts_keeps_the_prompt_a_view():
    prompts = PromptIds(np.arange(100, 112, dtype=np.int32), np.array([0, 3, 8, 12], dtype=np.int64))
    # five responses of two groups, interleaved: group 4 (prompt 2) and group 1 (prompt 0); one truncated
    responses = [np.array(r, dtype=np.int32) for r in ([1, 2], [3], [4, 5, 6], [], [7])]
    rollouts = Rollouts(example_index=[2, 0, 2, 0, 2], group_index=torch.tensor([4, 1, 4, 1, 4]),
                        task_index=torch.zeros(5, dtype=torch.long), response_ids=responses,
                        rollout_logprobs=[-np.arange(1, len(r) + 1, dtype=np.float32) for r in responses],
                        truncated=np.array([False, False, True, False, False]),
                        rewards=torch.zeros(5, dtype=torch.float64), texts=[], reward_timeouts=0, reward_errors=0,
                        num_filtered=0, generate_seconds=0.0, score_seconds=0.0)
    advantages = torch.tensor([0.5, -1.0, 1.5, 2.0, -0.5], dtype=torch.float64)
    groups = Group.from_rollouts(rollouts, prompts, advantages, overlong_mask=True)
    assert [g.group_id for g in groups] == [4, 1]  # in order of first appearance
    four, one = groups
    assert four.prompt_ids.tolist() == [108, 109, 110, 111] and one.prompt_ids.tolist() == [100, 101, 102]
    for g in groups:  # the prompt set's memory, not a copy
        assert g.prompt_ids.dtype == np.int32 and np.shares_memory(g.prompt_ids, prompts.flat)
    assert four.response_index.tolist() == [0, 2, 4] and one.response_index.tolist() == [1, 3]
    assert [r.tolist() for r in four.response_ids] == [[1, 2], [4, 5, 6], [7]]
    assert four.advantages.tolist() == [0.5, 1.5, -0.5] and one.advantages.tolist() == [-1.0, 2.0]
    assert four.loss_weights.tolist() == [1.0, 0.0, 1.0] and one.in_loss.tolist() == [True, False]
    assert [lp.tolist() for lp in one.rollout_logprobs] == [[-1.0], []]
    kept = Group.from_rollouts(rollouts, prompts, advantages, overlong_mask=False)
    assert kept[0].loss_weights.tolist() == [1.0, 1.0, 1.0]
    # the planner's units of a split group keep the view too
    units = plan_units(groups, max_tokens=6)
    assert len(units) > len(groups) and all(np.shares_memory(u.prompt_ids, prompts.flat) for u in units)


def test_resolve_attention_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu) == resolve_attention("per_sequence", cpu) == PER_SEQUENCE
    for cuda_only in ("flash_attention_2", "torch_varlen"):
        with pytest.raises(ValueError, match="needs CUDA"):
            resolve_attention(cuda_only, cpu)


def test_per_sequence_attention_refuses_a_row_without_boundaries(models):
    packed_model, _ = models
    with pytest.raises(ValueError, match="packed_attention_kwargs"):
        packed_model(torch.tensor([[1, 2, 3]]))


def random_sequences(lengths, seed=0, vocab=500) -> list[Group]:
    """One single-response Group per (prompt length, response length): plain sequences when packed."""
    g = torch.Generator().manual_seed(seed)
    return [sequence(torch.randint(0, vocab, (p,), generator=g).numpy(), torch.randint(0, vocab, (r,), generator=g).numpy(),
                     advantage=float(i) - 1.0)
            for i, (p, r) in enumerate(lengths)]


def ids_of(s: Group) -> torch.Tensor:
    """(1, P + R): a single-response Group's prompt + response, as one sequence."""
    return torch.from_numpy(np.concatenate([s.prompt_ids, s.response_ids[0]]).astype(np.int64))[None]


@pytest.fixture(scope="module")
def models(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return tuple(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32, attn_implementation=impl)
                 for impl in (PER_SEQUENCE, "eager"))


def test_packed_forward_equals_per_sequence(models):
    packed_model, alone_model = models
    samples = random_sequences([(5, 7), (9, 3), (1, 11), (17, 2)])
    mb = pack_groups(samples)
    with torch.no_grad():
        packed = packed_model(mb.input_ids, position_ids=mb.position_ids,
                              **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).logits[0]
        alone = torch.cat([alone_model(ids_of(s)).logits[0] for s in samples])
        assert (packed - alone).abs().max() < 1e-5
        # the same row through plain eager attention leaks across sequences: the check above can fail
        leaky = alone_model(mb.input_ids, position_ids=mb.position_ids).logits[0]
        assert (leaky - alone).abs().max() > 1e-2

        hidden = packed_model.model(mb.input_ids, position_ids=mb.position_ids,
                                    **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).last_hidden_state[0]
        logp = token_logprobs(hidden[mb.logit_positions], packed_model.lm_head.weight, mb.labels, chunk_size=5)
        expected = torch.log_softmax(alone.double(), -1)[mb.logit_positions, mb.labels]
        assert (logp.double() - expected).abs().max() < 1e-5


def test_packed_gradient_equals_one_by_one(models):
    packed_model, alone_model = models
    samples = random_sequences([(4, 6), (8, 2), (3, 9)], seed=1)
    mb = pack_groups(samples)
    weights = torch.randn(mb.labels.numel(), generator=torch.Generator().manual_seed(2))

    packed_model.zero_grad()
    hidden = packed_model.model(mb.input_ids, position_ids=mb.position_ids,
                                **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).last_hidden_state[0]
    (weights * token_logprobs(hidden[mb.logit_positions], packed_model.lm_head.weight, mb.labels, chunk_size=4)).sum().backward()

    alone_model.zero_grad()
    offset = 0
    for s in samples:
        logits = alone_model(ids_of(s)).logits[0]
        response = torch.from_numpy(s.response_ids[0].astype(np.int64))
        r = len(response)
        logp = torch.log_softmax(logits[len(s.prompt_ids) - 1:-1], -1).gather(1, response[:, None])[:, 0]
        (weights[offset:offset + r] * logp).sum().backward()
        offset += r
    alone_grads = dict(alone_model.named_parameters())
    for name, p in packed_model.named_parameters():
        expected = alone_grads[name].grad
        # fp32 sums in a different order: error relative to the tensor's scale (the tied embedding's gradient
        # reaches ~13, where one rounding step is ~1e-6)
        err = (p.grad - expected).abs().max().item()
        assert err <= 1e-6 + 1e-5 * expected.abs().max().item(), (name, err)
