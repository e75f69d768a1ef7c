"""The policy loss by hand on small tensors: clip regimes, dual clip, aggregation, IcePop, KL/entropy terms."""
from __future__ import annotations

import math

import pytest
import torch

from golong.trainer.batch import TrainSample
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.loss import LossDenominator, PolicyLossStats, icepop_weights, policy_loss, resolve_agg_mode

OFF = IcePopConfig(mode="off")


def run(ratios, advantages, *, seq_index=None, mask=None, denom=None, cfg=None, icepop=OFF, rollout_gap=None, **kw):
    """policy_loss with logp = old + log(ratio); returns (loss, d loss / d logp, stats)."""
    n = len(ratios)
    old = torch.full((n,), -1.0, dtype=torch.float64)
    logp = (old + torch.tensor(ratios, dtype=torch.float64).log()).requires_grad_()
    seq_index = torch.tensor(seq_index if seq_index is not None else [0] * n)
    mask = torch.tensor(mask if mask is not None else [1.0] * n, dtype=torch.float64)
    rollout = None if rollout_gap is None else old - torch.tensor(rollout_gap, dtype=torch.float64).log()
    loss, stats = policy_loss(logp, old, rollout, torch.tensor(advantages, dtype=torch.float64), mask, seq_index,
                              cfg or PolicyLossConfig(), icepop, denom or LossDenominator("token-mean", float(n)), **kw)
    loss.backward()
    return loss.item(), logp.grad.tolist(), stats


def test_each_clip_regime_and_dual_clip_by_hand():
    # (A, rho) -> per-token loss l and d l / d logp = d l / d rho * rho   [eps_low 0.2, eps_high 0.28, c 3]
    #  +1, 1.1: inside the range          l = -1.1,  grad -1.1
    #  +1, 1.5: above 1.28, clipped high  l = -1.28, grad 0
    #  +1, 0.5: below 0.8, A > 0 keeps rho (pessimistic max)   l = -0.5, grad -0.5
    #  -1, 0.5: below 0.8, clipped low    l = 0.8,   grad 0
    #  -1, 2.0: above 1.28, A < 0 keeps rho; under c      l = 2.0, grad 2.0
    #  -1, 4.0: above c = 3, dual clip    l = 3.0,   grad 0
    ratios, adv = [1.1, 1.5, 0.5, 0.5, 2.0, 4.0], [1, 1, 1, -1, -1, -1]
    loss, grad, stats = run(ratios, adv)
    assert loss == pytest.approx((-1.1 - 1.28 - 0.5 + 0.8 + 2.0 + 3.0) / 6)
    assert grad == pytest.approx([-1.1 / 6, 0, -0.5 / 6, 0, 2.0 / 6, 0])
    assert (stats.clipped_low, stats.clipped_high, stats.clipped_dual, stats.tokens) == (1, 1, 1, 6)
    m = stats.metrics()
    assert m["clip_frac_dual"] == pytest.approx(1 / 6) and m["loss"] == pytest.approx(loss)

    loss, grad, stats = run(ratios, adv, cfg=PolicyLossConfig(dual_clip_c=0.0))  # no dual clip: rho = 4 counts
    assert loss == pytest.approx((-1.1 - 1.28 - 0.5 + 0.8 + 2.0 + 4.0) / 6)
    assert grad[5] == pytest.approx(4.0 / 6) and stats.clipped_dual == 0


def test_aggregation_modes_by_hand():
    # rho = 1: l = -A. Sequence 0: three tokens with A = 1; sequence 1: one token with A = -2.
    # The step (all micro-batches and ranks) has 8 response tokens in 4 responses; L = 10.
    args = dict(seq_index=[0, 0, 0, 1])
    ratios, adv = [1.0] * 4, [1, 1, 1, -2]
    token_mean, grad, _ = run(ratios, adv, denom=LossDenominator("token-mean", 8.0), **args)
    assert token_mean == pytest.approx((-3 + 2) / 8) and grad == pytest.approx([-1 / 8] * 3 + [2 / 8])
    seq_mean, grad, _ = run(ratios, adv, denom=LossDenominator("seq-mean-token-mean", 4.0), **args)
    assert seq_mean == pytest.approx((-3 / 3 + 2 / 1) / 4) and grad == pytest.approx([-1 / 12] * 3 + [2 / 4])
    constant, _, _ = run(ratios, adv, denom=LossDenominator("constant-norm", 40.0), **args)  # Eq. 3: N * L
    assert constant == pytest.approx((-3 + 2) / 40)
    # the loss mask carries a response's loss_weight: 0 removes it, 0.5 halves it
    masked, grad, stats = run(ratios, adv, mask=[1, 1, 1, 0], denom=LossDenominator("token-mean", 8.0), **args)
    assert masked == pytest.approx(-3 / 8) and grad[3] == 0 and stats.tokens == 3 and stats.sequences == 1


def test_loss_denominator_counts_the_step():
    samples = [TrainSample([1], [2, 3, 4], 1.0), TrainSample([1, 2], [3], -1.0),
               TrainSample([1], [2, 2], 0.5, loss_weight=0.0),  # overlong-masked: counts nowhere
               TrainSample([1], [], 0.0)]  # empty response: nothing to count
    assert LossDenominator.build(samples, "token-mean").value == 4
    assert LossDenominator.build(samples, "seq-mean-token-mean").value == 2
    assert LossDenominator.build(samples, "constant-norm", constant_norm_length=16).value == 32
    assert LossDenominator.build([], "token-mean").value == 1  # nothing to learn: loss 0, not 0/0
    with pytest.raises(ValueError, match="constant_norm_length"):
        LossDenominator.build(samples, "constant-norm")
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, constant-norm"):
        LossDenominator.build(samples, "auto")


def test_resolve_agg_mode():
    assert resolve_agg_mode(PolicyLossConfig()) == "token-mean"
    assert resolve_agg_mode(PolicyLossConfig(), preferred="constant-norm") == "constant-norm"
    assert resolve_agg_mode(PolicyLossConfig(agg_mode="seq-mean-token-mean"), preferred="constant-norm") == "seq-mean-token-mean"


# k = pi_old / pi_rollout per token. Sequence 0: k = 1, 0.4, 6; sequence 1: k = 2, 5e-5 (below the veto 1e-4).
GAPS, SEQS = [1.0, 0.4, 6.0, 2.0, 5e-5], [0, 0, 0, 1, 1]


@pytest.mark.parametrize("mode,veto,weights", [
    ("mask", 1e-4, [1.0, 0.0, 0.0, 0.0, 0.0]),  # 0.4 < 0.5 and 6 > 5 masked; sequence 1 vetoed
    ("truncate", 1e-4, [1.0, 0.4, 5.0, 0.0, 0.0]),  # capped at 5; sequence 1 vetoed
    ("mask", 0.0, [1.0, 0.0, 0.0, 2.0, 0.0]),  # no veto: 2 stays, 5e-5 is only out of range
    ("truncate", 0.0, [1.0, 0.4, 5.0, 2.0, 5e-5]),
])
def test_icepop_weights_by_hand(mode, veto, weights):
    cfg = IcePopConfig(mode=mode, veto=veto)
    got = icepop_weights(torch.tensor(GAPS, dtype=torch.float64), torch.tensor(SEQS), cfg)
    assert got.tolist() == pytest.approx(weights)
    # in the loss: rho = 1, A = 1, so l = -1 and d l / d logp = -1, each weighted by w / 5
    loss, grad, stats = run([1.0] * 5, [1.0] * 5, seq_index=SEQS, icepop=cfg, rollout_gap=GAPS)
    assert loss == pytest.approx(-sum(weights) / 5)
    assert grad == pytest.approx([-w / 5 for w in weights])
    assert stats.icepop_masked == sum(w == 0 for w in weights)
    assert stats.icepop_vetoed == (1 if veto else 0)
    assert stats.icepop_logprob_gap == pytest.approx(sum(abs(math.log(k)) for k in GAPS))
    assert stats.icepop_kl == pytest.approx(sum(k - 1 - math.log(k) for k in GAPS))


def test_icepop_needs_rollout_logprobs():
    with pytest.raises(ValueError, match="rollout_logprobs"):
        run([1.0], [1.0], icepop=IcePopConfig(mode="mask"))


def test_kl_and_entropy_terms_by_hand():
    # rho = 1, A = 1: l = -1. r = ref - logp = log 2 -> k3 = 2 - log 2 - 1. Entropies 0.5 and 1.5.
    cfg = PolicyLossConfig(kl_coef=0.1, entropy_coef=0.01)
    ref = torch.full((2,), -1.0 + math.log(2), dtype=torch.float64)
    entropy = torch.tensor([0.5, 1.5], dtype=torch.float64)
    loss, _, stats = run([1.0, 1.0], [1.0, 1.0], cfg=cfg, ref_logp=ref, entropy=entropy)
    k3 = 2 - math.log(2) - 1
    assert loss == pytest.approx((2 * (-1 + 0.1 * k3) - 0.01 * 2.0) / 2)
    assert stats.ref_kl == pytest.approx(2 * k3) and stats.entropy == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        run([1.0], [1.0], cfg=cfg)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "constant-norm"])
def test_contributions_of_any_split_add_up_to_the_whole(agg):
    """Split invariance of the loss itself: the sum over micro-batches of contributions (and their
    gradients) does not depend on how whole sequences are grouped."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 4, 2, 5]
    mask_of = [1.0, 1.0, 0.0, 0.5, 1.0]
    old = [torch.randn(n, generator=g, dtype=torch.float64) for n in lengths]
    logp = [(o + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).requires_grad_() for o, n in zip(old, lengths)]
    rollout = [o + 0.1 * torch.randn(n, generator=g, dtype=torch.float64) for o, n in zip(old, lengths)]
    adv = torch.randn(len(lengths), generator=g, dtype=torch.float64)
    denom = LossDenominator(agg, {"token-mean": 11.0, "seq-mean-token-mean": 4.0, "constant-norm": 4.0 * 8}[agg])
    icepop = IcePopConfig(mode="truncate", high=1.05)

    def total(split):
        loss, stats = 0.0, PolicyLossStats()
        for group in split:  # a micro-batch: whole sequences, concatenated
            def cat(per_sequence):
                return torch.cat([per_sequence[i] for i in group])

            def per_token(values):
                return torch.cat([torch.full((lengths[i],), float(values[i]), dtype=torch.float64) for i in group])

            seq = torch.cat([torch.full((lengths[i],), j) for j, i in enumerate(group)])
            part, s = policy_loss(cat(logp), cat(old), cat(rollout), per_token(adv), per_token(mask_of), seq,
                                  PolicyLossConfig(), icepop, denom)
            loss, stats = loss + part, stats + s
        for p in logp:
            p.grad = None
        loss.backward()
        return loss.item(), [p.grad.clone() for p in logp], stats

    whole = total([[0, 1, 2, 3, 4]])
    for split in ([[0], [1], [2], [3], [4]], [[4, 1], [0, 3, 2]]):
        loss, grads, stats = total(split)
        assert loss == pytest.approx(whole[0], rel=1e-12)
        assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(grads, whole[1]))
        assert stats.tokens == whole[2].tokens == 3 + 1 + 2 + 5
