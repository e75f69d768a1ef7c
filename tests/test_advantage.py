"""Advantage estimators: hand-worked values (paper Eq. 1, 3, 5-8), edge cases, invariances, and an
exact-arithmetic reference.

Values are checked in float64 through `compute` (rtol 1e-12) and the public float32 output is
checked to be exactly that float64 result rounded.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from fractions import Fraction

import pytest
import torch

from golong.advantage import GroupedRewards, build

D = 1e-6  # delta, outside the square root

# A two-task batch. Task 0: binary EM; task 5: continuous F1 (task ids need not be contiguous).
#   g10 [1, 0, 0, 0]        mu = 0.25  sigma^2 = (0.75^2 + 3 * 0.25^2) / 3 = 0.75 / 3 = 0.25
#   g11 [1, 1, 1, 0]        mu = 0.75  sigma^2 = 0.25
#   g12 [1, 1, 1, 1]        mu = 1     sigma = 0 (zero variance)
#   g20 [0.1, 0.5, 0.9]     mu = 0.5   sigma^2 = (0.4^2 + 0 + 0.4^2) / 2 = 0.16
#   g21 [0.5]               singleton: advantage 0, left out of task statistics
#   g22 [0.6, 0.8]          mu = 0.7   sigma^2 = (0.1^2 + 0.1^2) / 1 = 0.02
REWARDS = [1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0.1, 0.5, 0.9, 0.5, 0.6, 0.8]
GROUPS = [10] * 4 + [11] * 4 + [12] * 4 + [20] * 3 + [21] + [22] * 2
TASKS = [0] * 12 + [5] * 6


def advantages64(estimator, rewards=REWARDS, groups=GROUPS, tasks=TASKS) -> torch.Tensor:
    """The float64 advantages, after checking the public float32 output is exactly their rounding."""
    public = estimator(rewards, groups, tasks)
    exact = estimator.compute(GroupedRewards.build(rewards, groups, tasks))
    assert public.dtype == torch.float32 and torch.equal(public, exact.to(torch.float32))
    return exact


def assert_values(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# Hand-worked values for each estimator


def test_grpo_hand_values():
    s0 = 0.5 + D  # g10, g11: sigma_u = 0.5
    s2 = 0.4 + D  # g20: sigma_u = 0.4
    s3 = math.sqrt(0.02) + D  # g22
    assert_values(advantages64(build("grpo")), [
        0.75 / s0, -0.25 / s0, -0.25 / s0, -0.25 / s0,   # g10: (r - 0.25) / (0.5 + delta), Eq. 1
        0.25 / s0, 0.25 / s0, 0.25 / s0, -0.75 / s0,     # g11: (r - 0.75) / (0.5 + delta)
        0, 0, 0, 0,                                      # g12: zero variance -> 0
        -0.4 / s2, 0, 0.4 / s2,                          # g20
        0,                                               # g21: singleton
        -0.1 / s3, 0.1 / s3])                            # g22


def test_dr_grpo_hand_values_and_loss_hint():
    estimator = build("dr_grpo")
    assert_values(advantages64(estimator), [
        0.75, -0.25, -0.25, -0.25,  # r - mu_u, Eq. 3
        0.25, 0.25, 0.25, -0.75,
        0, 0, 0, 0,
        -0.4, 0, 0.4,
        0,
        -0.1, 0.1])
    assert estimator.preferred_loss_agg == "constant-norm"
    assert build("grpo").preferred_loss_agg is None
    assert build("tmn_reweight").preferred_loss_agg is None
    assert build("task_std").preferred_loss_agg is None


def test_task_std_hand_values():
    # Task 0 pools all 12 rewards: 8 ones, 4 zeros, mean 2/3;
    #   sum of squares = 8 * (1/3)^2 + 4 * (2/3)^2 = 24/9; sample var = (24/9) / 11 = 8/33.
    # Task 5 pools the 5 rewards of g20 and g22 (not the singleton): mean 2.9 / 5 = 0.58;
    #   deviations -0.48, -0.08, 0.32, 0.02, 0.22 -> squares 0.2304 + 0.0064 + 0.1024 + 0.0004 + 0.0484
    #   = 0.388; sample var = 0.388 / 4 = 0.097.
    t0 = math.sqrt(8 / 33) + D
    t5 = math.sqrt(0.097) + D
    assert_values(advantages64(build("task_std")), [
        0.75 / t0, -0.25 / t0, -0.25 / t0, -0.25 / t0,
        0.25 / t0, 0.25 / t0, 0.25 / t0, -0.75 / t0,
        0, 0, 0, 0,
        -0.4 / t5, 0, 0.4 / t5,
        0,
        -0.1 / t5, 0.1 / t5])


def test_tmn_hand_values_without_reweighting():
    # Eq. 5: sigma_task = sqrt(mean over the task's prompts of sigma_u^2), each prompt once.
    #   task 0: sqrt((0.25 + 0.25 + 0) / 3) = sqrt(1/6)  (the zero-variance prompt counts, with 0)
    #   task 5: sqrt((0.16 + 0.02) / 2) = 0.3             (the singleton does not count)
    s0 = math.sqrt(1 / 6) + D
    s5 = 0.3 + D
    assert_values(advantages64(build("tmn_reweight", reweight=False)), [
        0.75 / s0, -0.25 / s0, -0.25 / s0, -0.25 / s0,
        0.25 / s0, 0.25 / s0, 0.25 / s0, -0.75 / s0,
        0, 0, 0, 0,
        -0.4 / s5, 0, 0.4 / s5,
        0,
        -0.1 / s5, 0.1 / s5])


def test_tmn_reweight_hand_values_alpha_08():
    s0 = math.sqrt(1 / 6) + D
    s5 = 0.3 + D
    # Task 0: mu_task = (0.25 + 0.75 + 1) / 3 = 2/3.
    #   g10: mu_tilde = 0.8 * 0.25 + 0.2 * 2/3 = 0.3333; rewards above: one 1 -> p = 1/4, w = e^0.25
    #   g11: mu_tilde = 0.8 * 0.75 + 0.2 * 2/3 = 0.7333; three 1s -> p = 3/4, w = e^-0.25
    #   g12: mu_tilde = 0.9333; all four -> p = 1, w = e^-0.5 (its advantages are 0 anyway)
    # Task 5: mu_task = (0.5 + 0.7) / 2 = 0.6 (singleton left out).
    #   g20: mu_tilde = 0.8 * 0.5 + 0.2 * 0.6 = 0.52; above: 0.9 -> p = 1/3, w = e^(1/6)
    #   g22: mu_tilde = 0.8 * 0.7 + 0.2 * 0.6 = 0.68; above: 0.8 -> p = 1/2, w = 1
    # Eq. 8: A_hat > 0 -> A_hat * w, else A_hat / w.
    e = math.exp
    estimator = build("tmn_reweight")
    assert_values(advantages64(estimator), [
        0.75 / s0 * e(0.25), -0.25 / s0 / e(0.25), -0.25 / s0 / e(0.25), -0.25 / s0 / e(0.25),
        0.25 / s0 * e(-0.25), 0.25 / s0 * e(-0.25), 0.25 / s0 * e(-0.25), -0.75 / s0 / e(-0.25),
        0, 0, 0, 0,
        -0.4 / s5 / e(1 / 6), 0, 0.4 / s5 * e(1 / 6),
        0,
        -0.1 / s5, 0.1 / s5])
    extra = estimator.last_stats.extra
    # Mean p_hat over the five prompts with a baseline: (1/4 + 3/4 + 1 + 1/3 + 1/2) / 5.
    assert extra["pass_rate_mean"] == pytest.approx((0.25 + 0.75 + 1 + 1 / 3 + 0.5) / 5, rel=1e-12)
    assert extra["w_min"] == pytest.approx(e(-0.5), rel=1e-12)
    assert extra["w_max"] == pytest.approx(e(0.25), rel=1e-12)


def test_tmn_reweight_four_quadrants():
    # Ratio A / A_hat for one row of each quadrant of Eq. 8 (task 0 of the batch above):
    a = advantages64(build("tmn_reweight"))
    a_hat = advantages64(build("tmn_reweight", reweight=False))
    ratio = (a / a_hat)[[0, 1, 4, 7]].tolist()
    assert ratio == pytest.approx([
        math.exp(0.25),   # hard prompt (p = 1/4, w > 1), positive: amplified by w
        math.exp(-0.25),  # hard prompt, negative: damped by 1/w
        math.exp(-0.25),  # easy prompt (p = 3/4, w < 1), positive: damped by w
        math.exp(0.25),   # easy prompt, negative: amplified by 1/w
    ], rel=1e-12)


# A task whose threshold moves with alpha, plus a singleton that must not enter mu_task:
#   g1 [0.1, 0.2, 0.45]  mu = 0.25  sigma^2 = (0.15^2 + 0.05^2 + 0.2^2) / 2 = 0.0325
#   g2 [0.55, 0.85, 1.0] mu = 0.8   sigma^2 = (0.25^2 + 0.05^2 + 0.2^2) / 2 = 0.0525
#   g3 [0.0]             singleton (if it counted, mu_task would be 0.35 and g1's p at alpha 0 would be 1/3)
#   sigma_task = sqrt((0.0325 + 0.0525) / 2) = sqrt(0.0425); mu_task = (0.25 + 0.8) / 2 = 0.525
ALPHA_REWARDS = [0.1, 0.2, 0.45, 0.55, 0.85, 1.0, 0.0]
ALPHA_GROUPS = [1, 1, 1, 2, 2, 2, 3]
ALPHA_TASKS = [3] * 7


def test_tmn_reweight_alpha_1_uses_the_prompt_mean_only():
    # mu_tilde = mu_u. g1: above 0.25 is 0.45 -> p = 1/3, w = e^(1/6); g2: above 0.8 are 0.85, 1.0 -> p = 2/3,
    # w = e^(-1/6)
    s = math.sqrt(0.0425) + D
    w1, w2 = math.exp(1 / 6), math.exp(-1 / 6)
    a = advantages64(build("tmn_reweight", alpha=1.0), ALPHA_REWARDS, ALPHA_GROUPS, ALPHA_TASKS)
    assert_values(a, [-0.15 / s / w1, -0.05 / s / w1, 0.2 / s * w1, -0.25 / s / w2, 0.05 / s * w2, 0.2 / s * w2, 0])


def test_tmn_reweight_alpha_0_uses_the_task_mean_only():
    # mu_tilde = mu_task = 0.525. g1: none above -> p = 0, w = e^0.5; g2: all three above -> p = 1, w = e^-0.5
    s = math.sqrt(0.0425) + D
    w1, w2 = math.exp(0.5), math.exp(-0.5)
    estimator = build("tmn_reweight", alpha=0)
    a = advantages64(estimator, ALPHA_REWARDS, ALPHA_GROUPS, ALPHA_TASKS)
    assert_values(a, [-0.15 / s / w1, -0.05 / s / w1, 0.2 / s * w1, -0.25 / s / w2, 0.05 / s * w2, 0.2 / s * w2, 0])
    assert estimator.last_stats.extra == pytest.approx({"pass_rate_mean": 0.5, "w_min": w2, "w_max": w1}, rel=1e-12)


def test_tmn_reweight_a_reward_equal_to_its_group_mean_is_not_above_it():
    # In floats mean([0.6, 0.8, 1.0]) = 0.7999999999999999; 0.8 must still not count as above it.
    # alpha = 1: p = 1/3 (only 1.0), w = e^(1/6); sigma_u = sigma_task = 0.2.
    estimator = build("tmn_reweight", alpha=1.0)
    a = advantages64(estimator, [0.6, 0.8, 1.0], [0, 0, 0], [0, 0, 0])
    assert estimator.last_stats.extra["pass_rate_mean"] == pytest.approx(1 / 3, rel=1e-12)
    w = math.exp(1 / 6)
    torch.testing.assert_close(a, torch.tensor([-0.2 / (0.2 + D) / w, 0.0, 0.2 / (0.2 + D) * w],
                                               dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # The same with float32 rewards, whose rounding is larger: mean([1/3, 2/3, 1]) in float32 inputs
    # is 0.66666668 < float32(2/3) = 0.66666669.
    estimator(torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float32), [0, 0, 0], [0, 0, 0])
    assert estimator.last_stats.extra["pass_rate_mean"] == pytest.approx(1 / 3, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Singleton and zero-variance groups, zero-variance tasks

ALL = ["grpo", "dr_grpo", "tmn_reweight", "task_std"]


@pytest.mark.parametrize("name", ALL)
def test_zero_variance_groups_give_exact_zeros(name):
    # 0.7 * 3 / 3 = 0.6999999999999998 in floats: without exact handling GRPO would give 2e-16 / 1e-6 = 2e-10.
    rewards = [0.7, 0.7, 0.7, 0.2, 0.4]
    a = build(name)(rewards, [0, 0, 0, 1, 1], [0, 0, 0, 0, 0])
    assert a[:3].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ALL)
def test_task_with_only_zero_variance_groups_gives_zeros_not_nan(name):
    # sigma_task = 0 (and task std = 0): A = 0 / (0 + delta) = 0.
    estimator = build(name)
    a = estimator([1, 1, 0, 0, 0, 0.3, 0.3], [4, 4, 9, 9, 9, 7, 7], [2, 2, 2, 2, 2, 2, 2])
    assert a.tolist() == [0.0] * 7
    assert estimator.last_stats.task_abs_mean == {2: 0.0}
    assert estimator.last_stats.abs_mean_cv == 0.0


@pytest.mark.parametrize("name", ALL)
def test_singletons_get_zero_and_stay_out_of_task_statistics(name):
    # Adding singleton groups (to the same task and to a task of their own) changes nothing else.
    base_r, base_g, base_t = [0.2, 0.9, 0.4, 0.1, 0.8], [1, 1, 2, 2, 2], [0, 0, 0, 0, 0]
    estimator = build(name)
    reference = estimator(base_r, base_g, base_t)
    reference_stats = estimator.last_stats
    a = estimator(base_r + [0.0, 1.0, 0.3], base_g + [5, 6, 7], base_t + [0, 0, 8])
    assert torch.equal(a[:5], reference) and a[5:].tolist() == [0.0, 0.0, 0.0]
    # Task 8 has no group with a baseline: it has no per-task mean and does not enter the CV.
    assert estimator.last_stats == reference_stats


# ------------------------------------------------------------------------------------------------
# Invariances


def random_batch(seed: int, n_tasks: int = 6, prompts_per_task: int = 6):
    """Mixed group sizes 1..8; rewards binary, on a 1/16 grid (many ties) or continuous, per task."""
    rng = random.Random(seed)
    rewards, groups, tasks = [], [], []
    for t in range(n_tasks):
        kind = t % 3
        for p in range(prompts_per_task):
            size = rng.choice([1, 2, 3, 4, 8, 8])
            level = rng.random()
            for _ in range(size):
                if kind == 0:
                    r = float(rng.random() < level)
                elif kind == 1:
                    r = rng.randrange(17) / 16
                else:
                    r = min(1.0, max(0.0, rng.gauss(level, 0.2)))
                rewards.append(r)
                groups.append(1000 * t + p)
                tasks.append(t)
    return rewards, groups, tasks


@pytest.mark.parametrize("name", ALL)
def test_shuffled_rows_give_the_same_per_response_advantages(name):
    rewards, groups, tasks = random_batch(seed=1)
    perm = torch.randperm(len(rewards), generator=torch.Generator().manual_seed(0))
    estimator = build(name)
    original = estimator(rewards, groups, tasks)
    stats = estimator.last_stats
    shuffled = estimator(torch.tensor(rewards, dtype=torch.float64)[perm], torch.tensor(groups)[perm],
                         torch.tensor(tasks)[perm])
    torch.testing.assert_close(shuffled, original[perm], rtol=1e-6, atol=1e-7)
    assert estimator.last_stats.task_abs_mean == pytest.approx(stats.task_abs_mean, rel=1e-9)
    assert estimator.last_stats.abs_mean_cv == pytest.approx(stats.abs_mean_cv, rel=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_ids_need_not_be_contiguous_or_zero_based(name):
    rewards, groups, tasks = random_batch(seed=2)
    estimator = build(name)
    original = estimator(rewards, groups, tasks)
    # Negative, huge and gapped ids, renumbered in a different order.
    relabeled = estimator(rewards, [-(g * 7919) - 10**12 for g in groups], [40 - 3 * t for t in tasks])
    assert torch.equal(relabeled, original)
    assert sorted(estimator.last_stats.task_abs_mean) == sorted(40 - 3 * t for t in set(tasks))


# ------------------------------------------------------------------------------------------------
# Reference: a per-response loop in exact rational arithmetic (square roots and exp in float64)


def reference(name: str, rewards, groups, tasks, alpha: float = 0.8):
    rows = defaultdict(list)
    for i, g in enumerate(groups):
        rows[g].append(i)
    r = [Fraction(x) for x in rewards]
    mu = {g: sum(r[i] for i in idx) / len(idx) for g, idx in rows.items()}
    var = {g: sum((r[i] - mu[g]) ** 2 for i in idx) / (len(idx) - 1) for g, idx in rows.items() if len(idx) > 1}
    task_prompts = defaultdict(list)  # task -> its prompts with a baseline
    for g in var:
        task_prompts[tasks[rows[g][0]]].append(g)
    a = Fraction(str(alpha))  # 0.8 means 4/5: decimal ties are ties
    out = []
    for i, g in enumerate(groups):
        if g not in var:
            out.append(0.0)
            continue
        c = r[i] - mu[g]
        prompts = task_prompts[tasks[i]]
        if name == "grpo":
            out.append(float(c) / (math.sqrt(var[g]) + D))
        elif name == "dr_grpo":
            out.append(float(c))
        elif name == "task_std":
            pooled = [r[j] for u in prompts for j in rows[u]]
            m = sum(pooled) / len(pooled)
            std = math.sqrt(sum((x - m) ** 2 for x in pooled) / (len(pooled) - 1))
            out.append(float(c) / (std + D))
        else:
            sigma_task = math.sqrt(sum(var[u] for u in prompts) / len(prompts))
            a_hat = float(c) / (sigma_task + D)
            if name == "tmn":
                out.append(a_hat)
                continue
            mu_task = sum(mu[u] for u in prompts) / len(prompts)
            mu_tilde = a * mu[g] + (1 - a) * mu_task
            p = sum(r[j] > mu_tilde for j in rows[g]) / len(rows[g])
            w = math.exp(0.5 - p)
            out.append(a_hat * w if c > 0 else a_hat / w)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("name,params", [
    ("grpo", {}), ("dr_grpo", {}), ("task_std", {}), ("tmn", {"reweight": False}),
    ("tmn_reweight", {"alpha": 0.0}), ("tmn_reweight", {"alpha": 0.5}), ("tmn_reweight", {}),
    ("tmn_reweight", {"alpha": 1.0})])
def test_matches_exact_reference(name, params, seed):
    rewards, groups, tasks = random_batch(seed)
    estimator = build("tmn_reweight" if name == "tmn" else name, **params)
    expected = reference(name, rewards, groups, tasks, alpha=params.get("alpha", 0.8))
    torch.testing.assert_close(advantages64(estimator, rewards, groups, tasks), expected, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# Diagnostics


def test_stats_per_task_abs_mean_and_population_cv():
    estimator = build("dr_grpo")
    estimator(REWARDS, GROUPS, TASKS)
    stats = estimator.last_stats
    # Task 0, 12 responses: (0.75 + 3 * 0.25 + 3 * 0.25 + 0.75 + 4 * 0) / 12 = 3 / 12 = 0.25
    # Task 5, the 5 responses with a baseline: (0.4 + 0 + 0.4 + 0.1 + 0.1) / 5 = 0.2
    # CV = population std / mean = 0.025 / 0.225 = 1/9 (the sample std would give sqrt(2)/9).
    assert stats.task_abs_mean == pytest.approx({0: 0.25, 5: 0.2}, rel=1e-12)
    assert stats.abs_mean_cv == pytest.approx(1 / 9, rel=1e-12)
    assert stats.as_metrics({0: "em", 5: "f1"}) == pytest.approx(
        {"advantage/abs_mean/em": 0.25, "advantage/abs_mean/f1": 0.2, "advantage/abs_mean_cv": 1 / 9}, rel=1e-12)
    assert set(stats.as_metrics()) == {"advantage/abs_mean/0", "advantage/abs_mean/5", "advantage/abs_mean_cv"}
    with pytest.raises(AttributeError):  # frozen: a logged snapshot cannot be changed afterwards
        stats.abs_mean_cv = 0.0


def test_tmn_reweight_metrics_include_pass_rate_and_w_range():
    estimator = build("tmn_reweight")
    estimator(REWARDS, GROUPS, TASKS)
    metrics = estimator.last_stats.as_metrics({0: "em"})
    assert {"advantage/pass_rate_mean", "advantage/w_min", "advantage/w_max",
            "advantage/abs_mean/em", "advantage/abs_mean/5", "advantage/abs_mean_cv"} == set(metrics)


def test_tmn_evens_out_task_scale_where_dr_grpo_does_not():
    # Two tasks with the same difficulty structure, one with rewards 10x smaller (a low-variance metric).
    rewards = [1, 0, 0, 1, 1, 0, 0.1, 0, 0, 0.1, 0.1, 0]
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    tasks = [0] * 6 + [1] * 6
    cv = {}
    for name, params in [("dr_grpo", {}), ("tmn_reweight", {"reweight": False})]:
        estimator = build(name, **params)
        estimator(rewards, groups, tasks)
        cv[name] = estimator.last_stats.abs_mean_cv
    # Dr.GRPO: task means 4/9 and 4/90 -> std = (4/9 - 4/90) / 2 = 0.2, mean = (4/9 + 4/90) / 2 = 0.2444,
    # CV = 9/11. TMN: the same A_hat in both tasks up to delta -> CV ~ 0.
    assert cv["dr_grpo"] == pytest.approx(9 / 11, rel=1e-9)
    assert cv["tmn_reweight"] < 1e-4
