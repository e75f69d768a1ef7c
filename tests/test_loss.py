"""The policy loss by hand on small tensors: clip regimes, dual clip, aggregation, IcePop, KL/entropy terms;
each pure function against float64 values by hand; the composed loss against the frozen pre-#26 one; and
no host sync inside the loss (meta tensors, and CUDA's sync debug mode where a GPU exists)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from golong.trainer.batch import Group, pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.loss import (AGG_MODES, LossDenominator, LossInputs, PolicyLossStats, aggregation_weights,
                                 clipped_surrogate, icepop_weights, k3_kl, log_ratio, loss_stats, policy_loss,
                                 resolve_agg_mode)
from golong.world import World
from tests import loss_before_26 as before

OFF = IcePopConfig(mode="off")
ONE = World(rank=0, size=1, local_rank=0, local_size=1, node_rank=0, backend="gloo")  # a world of one process
F64 = torch.float64


def run(ratios, advantages, *, seq_index=None, mask=None, denom=None, cfg=None, icepop=OFF, rollout_gap=None, **kw):
    """policy_loss with logp = old + log(ratio); returns (loss, d loss / d logp, loss_stats)."""
    n = len(ratios)
    old = torch.full((n,), -1.0, dtype=F64)
    logp = (old + torch.tensor(ratios, dtype=F64).log()).requires_grad_()
    seq_index = torch.tensor(seq_index if seq_index is not None else [0] * n)
    mask = torch.tensor(mask if mask is not None else [1.0] * n, dtype=F64)
    rollout = None if rollout_gap is None else old - torch.tensor(rollout_gap, dtype=F64).log()
    tokens = LossInputs(logp=logp, old_logp=old, advantages=torch.tensor(advantages, dtype=F64), token_mask=mask,
                        seq_index=seq_index, rollout_logp=rollout, **kw)
    cfg = cfg or PolicyLossConfig()
    loss = policy_loss(tokens, cfg, icepop, denom or LossDenominator("token-mean", float(n)))
    loss.backward()
    return loss.item(), logp.grad.tolist(), loss_stats(tokens, loss, cfg, icepop)


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
    samples = [Group(prompt_ids=[1], response_ids=[[2, 3, 4]], advantages=1.0),
               Group(prompt_ids=[1, 2], response_ids=[[3]], advantages=-1.0),
               Group(prompt_ids=[1], response_ids=[[2, 2]], advantages=0.5, loss_weights=0.0),  # overlong-masked: counts nowhere
               Group(prompt_ids=[1], response_ids=[[]], advantages=0.0)]  # empty response: nothing to count
    assert LossDenominator.build(samples, "token-mean", world=ONE).value == 4
    assert LossDenominator.build(samples, "seq-mean-token-mean", world=ONE).value == 2
    assert LossDenominator.build(samples, "constant-norm", constant_norm_length=16, world=ONE).value == 32
    assert LossDenominator.build([], "token-mean", world=ONE).value == 1  # nothing to learn: loss 0, not 0/0
    # the same responses in one prompt-once unit count the same (per response: weight != 0 and a token)
    unit = Group(prompt_ids=[1], response_ids=[[2, 3, 4], [3], [2, 2], []], advantages=[1.0, -1.0, 0.5, 0.0],
                 loss_weights=[1.0, 1.0, 0.0, 1.0])
    assert unit.in_loss.tolist() == [True, True, False, False]
    assert [LossDenominator.build([unit], agg, constant_norm_length=16, world=ONE).value
            for agg in ("token-mean", "seq-mean-token-mean", "constant-norm")] == [4, 2, 32]
    with pytest.raises(ValueError, match="constant_norm_length"):
        LossDenominator.build(samples, "constant-norm", world=ONE)
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, constant-norm"):
        LossDenominator.build(samples, "auto", world=ONE)


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
    got = icepop_weights(torch.tensor(GAPS, dtype=F64), torch.tensor(SEQS), cfg)
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
    ref = torch.full((2,), -1.0 + math.log(2), dtype=F64)
    entropy = torch.tensor([0.5, 1.5], dtype=F64)
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
    old = [torch.randn(n, generator=g, dtype=F64) for n in lengths]
    logp = [(o + 0.3 * torch.randn(n, generator=g, dtype=F64)).requires_grad_() for o, n in zip(old, lengths)]
    rollout = [o + 0.1 * torch.randn(n, generator=g, dtype=F64) for o, n in zip(old, lengths)]
    adv = torch.randn(len(lengths), generator=g, dtype=F64)
    denom = LossDenominator(agg, {"token-mean": 11.0, "seq-mean-token-mean": 4.0, "constant-norm": 4.0 * 8}[agg])
    icepop = IcePopConfig(mode="truncate", high=1.05)

    def total(split):
        loss, stats = 0.0, PolicyLossStats()
        for group in split:  # a micro-batch: whole sequences, concatenated
            def cat(per_sequence):
                return torch.cat([per_sequence[i] for i in group])

            def per_token(values):
                return torch.cat([torch.full((lengths[i],), float(values[i]), dtype=F64) for i in group])

            seq = torch.cat([torch.full((lengths[i],), j) for j, i in enumerate(group)])
            tokens = LossInputs(logp=cat(logp), old_logp=cat(old), advantages=per_token(adv),
                                token_mask=per_token(mask_of), seq_index=seq, rollout_logp=cat(rollout))
            part = policy_loss(tokens, PolicyLossConfig(), icepop, denom)
            loss, stats = loss + part, stats + loss_stats(tokens, part, PolicyLossConfig(), icepop)
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


# ------------------------------------------------------------------------------------------------
# Each pure function by hand, float64


def test_log_ratio_is_clamped():
    got = log_ratio(torch.tensor([0.5, -30.0, 30.0, -1.0], dtype=F64), torch.tensor([0.25, 0.0, 0.0, 19.5], dtype=F64))
    assert got.tolist() == [0.25, -20.0, 20.0, -20.0]


def test_clipped_surrogate_by_hand():
    # eps_low 0.2, eps_high 0.28 (clip-higher: the range is [0.8, 1.28], not symmetric), dual clip c = 3
    ratio = torch.tensor([1.1, 1.5, 0.5, 0.5, 2.0, 4.0, 1.5, 4.0, 0.7], dtype=F64)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 2.0, -2.0, 0.0], dtype=F64)
    expected = [
        -1.1,  # A > 0, inside the range: -A rho
        -(1 + 0.28),  # A > 0, rho above 1 + eps_high: clipped high
        -0.5,  # A > 0, rho below 1 - eps_low: the pessimistic max keeps -A rho
        1 - 0.2,  # A < 0, rho below 1 - eps_low: clipped low
        2.0,  # A < 0, rho above 1 + eps_high but under c: -A rho
        3.0,  # A < 0, rho above c: dual clip, -A c
        -2 * (1 + 0.28),  # |A| = 2, clipped high
        2 * 3.0,  # |A| = 2, dual clip: 6, not 8
        0.0,  # A = 0
    ]
    assert clipped_surrogate(ratio, adv, PolicyLossConfig()).tolist() == expected
    no_dual = clipped_surrogate(ratio, adv, PolicyLossConfig(dual_clip_c=0.0)).tolist()
    assert no_dual == expected[:5] + [4.0, expected[6], 8.0, 0.0]
    symmetric = clipped_surrogate(ratio, adv, PolicyLossConfig(clip_ratio_high=0.2)).tolist()
    assert symmetric[1] == -(1 + 0.2) and symmetric[6] == -2 * (1 + 0.2)


def test_k3_kl_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5, -40.0], dtype=F64)
    ref = torch.tensor([-1.0 + math.log(2), -2.0, -0.5 - math.log(3), 0.0], dtype=F64)
    # r = ref - logp = log 2, 0, -log 3, 40 (clamped to 20); k3 = e^r - r - 1
    expected = [1 - math.log(2), 0.0, 1 / 3 + math.log(3) - 1, math.exp(20) - 21]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, rel=1e-14)
    assert (k3_kl(logp, ref) >= 0).all()


def test_icepop_weights_off_and_a_response_without_tokens():
    k = torch.tensor([1.0, 5e-5, 2.0, 2.0], dtype=F64)
    seq = torch.tensor([0, 2, 2, 5])  # responses 1, 3 and 4 have no tokens (their seq_index never appears)
    assert icepop_weights(k, seq, OFF).tolist() == [1.0] * 4
    assert icepop_weights(k, seq, IcePopConfig(mode="truncate", veto=1e-4)).tolist() == [1.0, 0.0, 0.0, 2.0]
    assert icepop_weights(k, seq, IcePopConfig(mode="mask", veto=0.0)).tolist() == [1.0, 0.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="off, mask, truncate"):
        icepop_weights(k, seq, IcePopConfig(mode="clip"))


# A step of three prompt groups in two micro-batches; group 7 is split across them.
#   group 7: a (3 tokens), b (1 token)           4 tokens
#   group 9: c (2 tokens), d (2 tokens, weight 0.5)  4 tokens
#   group 4: e (2 tokens, weight 0): no response in the loss, so the group is not counted
# In the loss: 8 tokens, 4 responses, 2 groups. L = 10. Each response is a unit of its own.
GROUPS = {7: Group(prompt_ids=[1, 2], response_ids=[[5, 6, 7], [8]], advantages=1.0, group_id=7),
          9: Group(prompt_ids=[3], response_ids=[[5, 6], [7, 8]], advantages=1.0, loss_weights=[1.0, 0.5], group_id=9),
          4: Group(prompt_ids=[4], response_ids=[[5, 6]], advantages=1.0, loss_weights=0.0, group_id=4)}
STEP = {"a": GROUPS[7].select([0]), "b": GROUPS[7].select([1]), "c": GROUPS[9].select([0]),
        "d": GROUPS[9].select([1]), "e": GROUPS[4]}
MICRO_BATCHES = [["a", "c"], ["b", "d", "e"]]


def step_weights(agg: str) -> list[list[float]]:
    denom = LossDenominator.build(list(STEP.values()), agg, constant_norm_length=10, world=ONE)
    weights = []
    for names in MICRO_BATCHES:
        mb = pack_groups([STEP[n] for n in names])
        mask = mb.loss_mask.double()
        weights.append(aggregation_weights(mask, mb.seq_index, denom, denom.group_index(mb.group_ids, mask)).tolist())
    return weights


@pytest.mark.parametrize("agg,per_response", [
    ("group-token-mean", {"a": 1 / (2 * 4), "b": 1 / (2 * 4), "c": 1 / (2 * 4), "d": 0.5 / (2 * 4)}),  # Eq. 4
    ("token-mean", {"a": 1 / 8, "b": 1 / 8, "c": 1 / 8, "d": 0.5 / 8}),  # DAPO
    ("seq-mean-token-mean", {"a": 1 / (3 * 4), "b": 1 / (1 * 4), "c": 1 / (2 * 4), "d": 0.5 / (2 * 4)}),
    ("constant-norm", {"a": 1 / 40, "b": 1 / 40, "c": 1 / 40, "d": 0.5 / 40}),  # Eq. 3: N * L
])
def test_aggregation_weights_by_hand_over_a_split_step(agg, per_response):
    expected = [[per_response.get(n, 0.0) for n in names for _ in STEP[n].response_ids[0]] for names in MICRO_BATCHES]
    weights = step_weights(agg)
    assert weights == expected
    if agg == "group-token-mean":  # each group weighs 1 / P in all, however it is split
        a_and_b = sum(weights[0][:3]) + weights[1][0]
        assert a_and_b == 1 / 2


def test_group_index_maps_group_ids_once_per_step():
    denom = LossDenominator.build(list(STEP.values()), "group-token-mean", world=ONE)
    assert denom.group_ids.tolist() == [7, 9] and denom.group_tokens.tolist() == [4.0, 4.0]
    assert denom.group_tokens.dtype == F64 and denom.value == 2
    mb = pack_groups([STEP["b"], STEP["d"], STEP["e"]])
    assert mb.group_ids.tolist() == [7, 9, 9, 4, 4]
    assert denom.group_index(mb.group_ids, mb.loss_mask).tolist() == [0, 1, 1, 0, 0]  # e: out of the loss, weight 0
    with pytest.raises(ValueError, match="did not see"):
        denom.group_index(torch.tensor([7, 5]), torch.tensor([1.0, 1.0]))
    assert LossDenominator.build(list(STEP.values()), "token-mean", world=ONE).group_index(mb.group_ids, mb.loss_mask) is None
    # a step with no group in the loss: every weight is 0
    nothing = LossDenominator.build([STEP["e"]], "group-token-mean", world=ONE)
    assert nothing.group_ids.tolist() == [] and nothing.value == 1
    index = nothing.group_index(mb.group_ids[3:], mb.loss_mask[3:])
    assert aggregation_weights(mb.loss_mask[3:], mb.seq_index[3:], nothing, index).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="group index"):
        aggregation_weights(mb.loss_mask, mb.seq_index, denom)


# ------------------------------------------------------------------------------------------------
# The composed loss equals the one before #26 (tests/loss_before_26.py), on random inputs


def random_step(seed: int):
    """Six prompt groups of random responses (one without tokens, loss weights 1, 0.5 and 0), packed as
    units into three micro-batches with groups split across them; per micro-batch random log-probs around
    the sampled ones, one response far off the rollout's (the veto) and some beyond IcePop's range."""
    g = torch.Generator().manual_seed(seed)
    groups, where = [], []  # where[i]: (group, position in it) of the step's response i
    for group_id in range(6):
        prompt = torch.randint(0, 50, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).numpy()
        responses, advantages, weights = [], [], []
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            length = int(torch.randint(0, 7, (1,), generator=g))
            weights.append([1.0, 1.0, 0.5, 0.0][int(torch.randint(0, 4, (1,), generator=g))])
            responses.append(torch.randint(0, 50, (length,), generator=g).numpy())
            advantages.append(float(torch.randn(1, generator=g)))
        groups.append(Group(prompt_ids=prompt, response_ids=responses, advantages=advantages, loss_weights=weights,
                            group_id=100 + 3 * group_id))
        where += [(groups[-1], k) for k in range(len(responses))]
    order = torch.randperm(len(where), generator=g).tolist()
    by_group: dict[int, list[int]] = {}
    for i in order:  # units: one or two responses of one group
        by_group.setdefault(where[i][0].group_id, []).append(i)
    units = [ids[j:j + 2] for ids in by_group.values() for j in range(0, len(ids), 2)]
    units = [units[i] for i in torch.randperm(len(units), generator=g).tolist()]
    micro_batches = []
    for part in (units[0::3], units[1::3], units[2::3]):
        mb = pack_groups([where[u[0]][0].select([where[i][1] for i in u]) for u in part])
        n = mb.labels.numel()
        old = -2.0 + torch.randn(n, generator=g, dtype=F64)
        mb.rollout_logprobs = old + 0.6 * torch.randn(n, generator=g, dtype=F64)
        in_loss = (mb.loss_mask > 0).nonzero()
        if in_loss.numel():  # k = e^-12 < veto in one response of the loss
            mb.rollout_logprobs[mb.seq_index == mb.seq_index[in_loss[len(in_loss) // 2, 0]]] += 12.0
        mb.old_logprobs, mb.ref_logprobs = old, old + 0.3 * torch.randn(n, generator=g, dtype=F64)
        logp = old + 0.4 * torch.randn(n, generator=g, dtype=F64)
        micro_batches.append((mb, logp, torch.rand(n, generator=g, dtype=F64)))
    return groups, micro_batches


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("icepop", ["off", "mask", "truncate"])
@pytest.mark.parametrize("kl,entropy", [(0.0, 0.0), (0.05, 0.01)])
def test_policy_loss_equals_the_loss_before_the_split(agg, icepop, kl, entropy):
    groups, micro_batches = random_step(seed=AGG_MODES.index(agg))
    cfg, icepop_cfg = PolicyLossConfig(kl_coef=kl, entropy_coef=entropy), IcePopConfig(mode=icepop)
    denom = LossDenominator.build(groups, agg, constant_norm_length=8, world=ONE)
    old_denom = before.OldDenominator(agg, denom.value, None if denom.group_ids is None else
                                      dict(zip(denom.group_ids.tolist(), denom.group_tokens.tolist())))
    some_clipped = some_vetoed = 0.0
    for mb, logp, ent in micro_batches:
        new_logp, old_logp = logp.clone().requires_grad_(), logp.clone().requires_grad_()
        tokens = LossInputs(logp=new_logp, old_logp=mb.old_logprobs, advantages=mb.advantages, token_mask=mb.loss_mask,
                            seq_index=mb.seq_index, rollout_logp=mb.rollout_logprobs, entropy=ent, ref_logp=mb.ref_logprobs,
                            group_index=denom.group_index(mb.group_ids, mb.loss_mask))
        loss = policy_loss(tokens, cfg, icepop_cfg, denom)
        stats = loss_stats(tokens, loss, cfg, icepop_cfg)
        reference, reference_stats = before.policy_loss(
            old_logp, mb.old_logprobs, mb.rollout_logprobs, mb.advantages, mb.loss_mask, mb.seq_index, cfg, icepop_cfg,
            old_denom, entropy=ent, ref_logp=mb.ref_logprobs, group_ids=mb.group_ids)
        loss.backward()
        reference.backward()
        # float64 both: equal to rounding (the order of the sums differs)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-15)
        assert torch.allclose(new_logp.grad, old_logp.grad, rtol=1e-12, atol=1e-15)
        assert vars(stats) == pytest.approx(vars(reference_stats), rel=1e-12, abs=1e-12)
        some_clipped += stats.clipped_low + stats.clipped_high + stats.clipped_dual
        some_vetoed += stats.icepop_vetoed
    assert some_clipped > 0 and (some_vetoed > 0 or icepop == "off")  # the random inputs reach those branches


# ------------------------------------------------------------------------------------------------
# No host sync. A meta tensor has a shape but no values: anything that reads a value on the host
# (.item(), .tolist(), int(x.max()), or an op whose output shape depends on values: nonzero, boolean
# indexing, unique, bincount) raises on it. So a loss that runs on meta tensors never waits for the device.


def meta_inputs(n: int = 6, *, requires_grad: bool = True) -> LossInputs:
    def meta(dtype=F64):
        return torch.empty(n, dtype=dtype, device="meta")

    return LossInputs(logp=meta().requires_grad_(requires_grad), old_logp=meta(), advantages=meta(), token_mask=meta(),
                      seq_index=meta(torch.long), rollout_logp=meta(), entropy=meta(), ref_logp=meta(),
                      group_index=meta(torch.long))


META_CFG, META_ICEPOP = PolicyLossConfig(kl_coef=0.1, entropy_coef=0.01), IcePopConfig(mode="mask", veto=1e-4)


@pytest.mark.parametrize("agg", AGG_MODES)
def test_the_loss_runs_on_meta_tensors(agg):
    denom = LossDenominator.build(list(STEP.values()), agg, constant_norm_length=10, world=ONE).to("meta")
    tokens = meta_inputs()
    weights = aggregation_weights(tokens.token_mask, tokens.seq_index, denom, tokens.group_index)
    assert weights.device.type == "meta" and weights.shape == (6,)
    loss = policy_loss(tokens, META_CFG, META_ICEPOP, denom)
    loss.backward()
    assert loss.device.type == "meta" and tokens.logp.grad.shape == (6,)
    # the check can fail: the loss before #26 read values on the host (veto: int(seq_index.max());
    # group-token-mean: .tolist(); seq-mean-token-mean: bincount), so it cannot run on meta tensors
    old_denom = before.OldDenominator(agg, denom.value, {7: 4.0, 9: 4.0} if agg == "group-token-mean" else None)
    t = meta_inputs()
    with pytest.raises((RuntimeError, NotImplementedError)):
        before.policy_loss(t.logp, t.old_logp, t.rollout_logp, t.advantages, t.token_mask, t.seq_index, META_CFG,
                           META_ICEPOP, old_denom, entropy=t.entropy, ref_logp=t.ref_logp, group_ids=t.group_index)
    if agg in ("group-token-mean", "seq-mean-token-mean"):
        with pytest.raises((RuntimeError, NotImplementedError)):
            before.aggregation_weights(t.token_mask, t.seq_index, old_denom, t.group_index)


class HostReads(TorchFunctionMode):
    """Counts Tensor.tolist calls and answers them with zeros (a meta tensor has no values to copy)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.reads += 1
            return [0.0] * args[0].numel()
        return func(*args, **(kwargs or {}))


def test_loss_stats_read_the_device_once():
    tokens = meta_inputs(requires_grad=False)
    loss = torch.empty((), dtype=F64, device="meta")
    with HostReads() as mode:
        stats = loss_stats(tokens, loss, META_CFG, META_ICEPOP)
    assert mode.reads == 1 and stats == PolicyLossStats()
    t = meta_inputs(requires_grad=False)
    with HostReads(), pytest.raises((RuntimeError, NotImplementedError)):  # the check can fail: the old stats read more
        before.policy_loss(t.logp, t.old_logp, t.rollout_logp, t.advantages, t.token_mask, t.seq_index, META_CFG,
                           IcePopConfig(mode="off"), before.OldDenominator("token-mean", 6.0), entropy=t.entropy,
                           ref_logp=t.ref_logp)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
@pytest.mark.parametrize("agg", AGG_MODES)
def test_no_cuda_sync_in_the_loss_and_one_in_its_stats(agg):
    groups, micro_batches = random_step(seed=0)
    denom = LossDenominator.build(groups, agg, constant_norm_length=8, world=ONE).to("cuda")
    cfg, icepop = PolicyLossConfig(kl_coef=0.05, entropy_coef=0.01), IcePopConfig(mode="mask")
    for mb, logp, ent in micro_batches:
        group_index = denom.group_index(mb.group_ids, mb.loss_mask)  # on the host copy, as the engine does
        mb = mb.to("cuda")
        tokens = LossInputs(logp=logp.cuda().requires_grad_(), old_logp=mb.old_logprobs, advantages=mb.advantages,
                            token_mask=mb.loss_mask, seq_index=mb.seq_index, rollout_logp=mb.rollout_logprobs,
                            entropy=ent.cuda(), ref_logp=mb.ref_logprobs,
                            group_index=None if group_index is None else group_index.cuda())
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                loss = policy_loss(tokens, cfg, icepop, denom)
                loss.backward()
                in_loss = len(caught)
                stats = loss_stats(tokens, loss, cfg, icepop)
                in_stats = len(caught) - in_loss
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert in_loss == 0 and in_stats == 1, [str(w.message) for w in caught]
        assert stats.tokens == float((mb.loss_mask > 0).sum())
