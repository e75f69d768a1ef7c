"""token_logprobs against a float64 naive log-softmax: values, entropy and gradients."""
from __future__ import annotations

import pytest
import torch

from golong.trainer.logprobs import token_logprobs


def naive(hidden, weight, labels, temperature):
    """float64 log-probs and entropy through the whole [T, V] logits."""
    log_p = torch.log_softmax(hidden.double() @ weight.double().T / temperature, dim=-1)
    return log_p.gather(1, labels[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)


def inputs(T=37, H=16, V=50, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=g)
    return hidden, weight, labels


def grads_of(fn, hidden, weight):
    hidden.grad = weight.grad = None
    fn().backward()
    return hidden.grad.double(), weight.grad.double()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("chunk_size", [1, 8, 37, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_entropy_and_gradients_match_float64(dtype, tol, chunk_size, temperature):
    hidden, weight, labels = inputs(dtype=dtype)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(37, generator=g, dtype=torch.float64), torch.randn(37, generator=g, dtype=torch.float64)

    logp, entropy = token_logprobs(hidden, weight, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
    ref_logp, ref_entropy = naive(hidden, weight, labels, temperature)
    assert logp.dtype == torch.promote_types(dtype, torch.float32)
    assert (logp.double() - ref_logp).abs().max() < tol
    assert (entropy.double() - ref_entropy).abs().max() < tol

    def ours():
        lp, ent = token_logprobs(hidden, weight, labels, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
        return (a * lp.double()).sum() + (b * ent.double()).sum()

    def reference():
        lp, ent = naive(hidden, weight, labels, temperature)
        return (a * lp).sum() + (b * ent).sum()

    for got, want in zip(grads_of(ours, hidden, weight), grads_of(reference, hidden, weight)):
        assert (got - want).abs().max() < tol * 10


@pytest.mark.parametrize("output", [0, 1], ids=["logprobs", "entropy"])
def test_gradient_of_one_output_alone(output):
    """Only one output in the loss: the other arrives in backward as None and must add nothing."""
    hidden, weight, labels = inputs()
    ours = grads_of(lambda: token_logprobs(hidden, weight, labels, chunk_size=5, with_entropy=True)[output].sum(),
                    hidden, weight)
    want = grads_of(lambda: naive(hidden, weight, labels, 1.0)[output].sum(), hidden, weight)
    for got, expected in zip(ours, want):
        assert (got - expected).abs().max() < 1e-11


def test_bfloat16_inputs_give_fp32_logprobs_and_bf16_gradients():
    """The GPU dtype path: bf16 logits matmul, fp32 softmax, weight gradient summed over chunks in fp32."""
    hidden, weight, labels = inputs(dtype=torch.bfloat16)
    logp, entropy = token_logprobs(hidden, weight, labels, chunk_size=8, with_entropy=True)
    assert logp.dtype == entropy.dtype == torch.float32
    ref_logp, ref_entropy = naive(hidden, weight, labels, 1.0)
    assert (logp.double() - ref_logp).abs().max() < 0.1  # bf16 logits of size ~10 round by ~0.04
    assert (entropy.double() - ref_entropy).abs().max() < 0.05
    ours = grads_of(lambda: (logp.sum() + entropy.sum()), hidden, weight)
    want = grads_of(lambda: sum(x.sum() for x in naive(hidden, weight, labels, 1.0)), hidden, weight)
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    for got, expected in zip(ours, want):
        assert (got - expected).abs().max() < 0.03 * expected.abs().max()


def test_gradcheck():
    hidden, weight, labels = inputs(T=6, H=3, V=5)
    assert torch.autograd.gradcheck(
        lambda h, w: token_logprobs(h, w, labels, temperature=1.3, chunk_size=4, with_entropy=True), (hidden, weight))


def test_no_tokens_and_frozen_weight():
    hidden, weight, labels = inputs(T=0)
    assert token_logprobs(hidden, weight, labels).shape == (0,)
    hidden, weight, labels = inputs()
    weight.requires_grad_(False)
    token_logprobs(hidden, weight, labels, chunk_size=10).sum().backward()
    assert hidden.grad is not None and weight.grad is None


def test_rejects_mismatched_shapes():
    hidden, weight, labels = inputs()
    with pytest.raises(ValueError, match="weight"):
        token_logprobs(hidden, weight[:, :3], labels)
    with pytest.raises(ValueError, match="labels"):
        token_logprobs(hidden, weight, labels[:5])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, labels, temperature=0.0)
