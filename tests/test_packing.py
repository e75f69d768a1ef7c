"""Packing: the micro-batch plan, the packed row, and packed attention equal to running each sequence alone."""
from __future__ import annotations

import random

import pytest
import torch

from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs, resolve_attention
from golong.trainer.batch import TrainSample, pack
from golong.trainer.logprobs import token_logprobs
from golong.trainer.packing import plan_micro_batches


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
    a = TrainSample(prompt_ids=[10, 11], response_ids=[12, 13, 14], advantage=1.5,
                    rollout_logprobs=torch.tensor([-1.0, -2.0, -3.0]))
    b = TrainSample(prompt_ids=[20, 21, 22], response_ids=[23], advantage=-0.5,
                    rollout_logprobs=torch.tensor([-4.0]), loss_weight=0.0)
    mb = pack([a, b])
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
    mb = pack([])
    assert mb.num_tokens == 2 and mb.num_real_tokens == 0
    assert mb.labels.numel() == 1 and mb.loss_mask.tolist() == [0.0]


def test_pack_without_rollout_logprobs_and_bad_samples():
    mb = pack([TrainSample([1], [2, 3], 1.0), TrainSample([4], [5], 1.0, rollout_logprobs=torch.zeros(1))])
    assert mb.rollout_logprobs is None
    with pytest.raises(ValueError, match="one per response token"):
        TrainSample([1], [2, 3], 1.0, rollout_logprobs=torch.zeros(3))
    with pytest.raises(ValueError, match="at least one prompt token"):
        TrainSample([], [2], 1.0)


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


def random_samples(lengths, seed=0, vocab=500):
    g = torch.Generator().manual_seed(seed)
    return [TrainSample(torch.randint(0, vocab, (p,), generator=g).tolist(),
                        torch.randint(0, vocab, (r,), generator=g).tolist(), advantage=float(i) - 1.0)
            for i, (p, r) in enumerate(lengths)]


@pytest.fixture(scope="module")
def models(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return tuple(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32, attn_implementation=impl)
                 for impl in (PER_SEQUENCE, "eager"))


def test_packed_forward_equals_per_sequence(models):
    packed_model, alone_model = models
    samples = random_samples([(5, 7), (9, 3), (1, 11), (17, 2)])
    mb = pack(samples)
    with torch.no_grad():
        packed = packed_model(mb.input_ids, position_ids=mb.position_ids,
                              **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).logits[0]
        alone = torch.cat([alone_model(torch.tensor([s.prompt_ids + s.response_ids])).logits[0] for s in samples])
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
    samples = random_samples([(4, 6), (8, 2), (3, 9)], seed=1)
    mb = pack(samples)
    weights = torch.randn(mb.labels.numel(), generator=torch.Generator().manual_seed(2))

    packed_model.zero_grad()
    hidden = packed_model.model(mb.input_ids, position_ids=mb.position_ids,
                                **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).last_hidden_state[0]
    (weights * token_logprobs(hidden[mb.logit_positions], packed_model.lm_head.weight, mb.labels, chunk_size=4)).sum().backward()

    alone_model.zero_grad()
    offset = 0
    for s in samples:
        logits = alone_model(torch.tensor([s.prompt_ids + s.response_ids])).logits[0]
        r = len(s.response_ids)
        logp = torch.log_softmax(logits[len(s.prompt_ids) - 1:-1], -1).gather(1, torch.tensor(s.response_ids)[:, None])[:, 0]
        (weights[offset:offset + r] * logp).sum().backward()
        offset += r
    alone_grads = dict(alone_model.named_parameters())
    for name, p in packed_model.named_parameters():
        expected = alone_grads[name].grad
        # fp32 sums in a different order: error relative to the tensor's scale (the tied embedding's gradient
        # reaches ~13, where one rounding step is ~1e-6)
        err = (p.grad - expected).abs().max().item()
        assert err <= 1e-6 + 1e-5 * expected.abs().max().item(), (name, err)
