"""Pieces of the training loop that need no engine: the rollouts' group filter, dynamic sampling's rounds
with the real PromptSampler (reaching the target, the round bound, resuming mid-epoch), the step count,
and overlong masking."""
import logging

import numpy as np
import pytest
import torch

from golong.config import load_config
from golong.data.sampler import PromptSampler
from golong.rollout.collect import Rollouts, sample_step
from golong.data.prompts import PromptIds
from golong.trainer.batch import Group
from golong.trainer.loop import estimated_total_steps, finished, length_bias, round_size


def make_rollouts(groups, rewards, examples=None, truncated=None):
    n = len(groups)
    return Rollouts(example_index=list(examples if examples is not None else range(n)),
                    group_index=torch.tensor(groups, dtype=torch.long), task_index=torch.zeros(n, dtype=torch.long),
                    response_ids=[np.array([i], dtype=np.int32) for i in range(n)],
                    rollout_logprobs=[np.zeros(1, dtype=np.float32) for _ in range(n)],
                    truncated=np.array(truncated if truncated is not None else [False] * n, dtype=bool),
                    rewards=torch.tensor(rewards, dtype=torch.float64), texts=[], reward_timeouts=0, reward_errors=1,
                    num_filtered=0, generate_seconds=2.0, score_seconds=1.0)


def test_groups_whose_rewards_all_agree_are_dropped_in_order():
    # group 7: all 1 (dropped); group 2: 0 and 0.5 (kept); group 5: all 0 (dropped); group 9: continuous, differs
    r = make_rollouts([7, 2, 7, 5, 2, 9, 5, 9], [1.0, 0.0, 1.0, 0.0, 0.5, 0.3, 0.0, 0.30001])
    kept = r.informative()
    assert kept.group_index.tolist() == [2, 2, 9, 9]
    assert kept.example_index == [1, 4, 5, 7]
    assert kept.rewards.tolist() == [0.0, 0.5, 0.3, 0.30001]
    assert [ids.tolist() for ids in kept.response_ids] == [[1], [4], [5], [7]]
    assert kept.first_groups(1).group_index.tolist() == [2, 2]


def test_a_batch_with_nothing_to_learn_gives_an_empty_selection_and_concat_adds_up():
    r = make_rollouts([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])
    assert len(r.informative()) == 0
    rounds = Rollouts.concat([r, make_rollouts([3, 3], [0.0, 1.0])], parallel=False)
    assert rounds.group_index.tolist() == [0, 0, 1, 1, 3, 3] and rounds.reward_errors == 2
    assert rounds.generate_seconds == 4.0  # rounds run one after another
    ranks = Rollouts.concat([r, make_rollouts([3, 3], [0.0, 1.0])], parallel=True)
    assert ranks.generate_seconds == 2.0 and ranks.score_seconds == 1.0  # ranks run side by side
    assert ranks.generation_tokens_per_s == 6 / 2.0


def test_per_example_scores_in_sampling_order():
    r = make_rollouts([0, 0, 1, 1], [0.25, 0.5, 1.0, 0.0], examples=[2, 2, 0, 0])
    scores, texts = r.per_example(3)
    assert scores == [[1.0, 0.0], [], [0.25, 0.5]] and texts == [[], [], []]


# ------------------------------------------------------------------------------------------------
# Dynamic sampling with the real sampler: a round's rewards are a fixed function of its rows, so every
# count below is known in advance.

G = 4


def informative(row: int) -> bool:
    return row % 3 == 0  # rows 0, 3, 6, ... get rewards that differ within their group


def round_of(sampler: PromptSampler, drawn_rows: list):
    """next_round for sample_step: draws from the real sampler; G responses per row."""
    def next_round(first_group: int):
        rows = sampler.next_batch()
        drawn_rows.append(rows)
        groups = [first_group + k for k in range(len(rows)) for _ in range(G)]
        rewards = [float(j % 2) if informative(row) else 1.0 for row in rows for j in range(G)]
        return make_rollouts(groups, rewards, examples=[row for row in rows for _ in range(G)]), len(rows)
    return next_round


def test_dynamic_sampling_reaches_the_target_over_several_rounds_and_trims_to_it():
    sampler = PromptSampler(num_examples=300, batch_size=8, seed=5)
    drawn: list = []
    step = sample_step(round_of(sampler, drawn), target_groups=6, filter_groups=True, max_rounds=32)
    rows = [r for batch in drawn for r in batch]
    cumulative = np.cumsum([sum(informative(r) for r in batch) for batch in drawn])
    assert cumulative[-1] >= 6 and (len(drawn) == 1 or cumulative[-2] < 6)  # stopped at the first round enough
    assert step.rounds == len(drawn) > 1 and step.prompts_drawn == 8 * step.rounds
    assert step.groups_informative == cumulative[-1]
    # exactly the first 6 informative prompts, in drawing order, with all G responses each
    first_six = [r for r in rows if informative(r)][:6]
    assert step.train.num_groups == 6 and len(step.train) == 6 * G
    assert sorted(set(step.train.example_index), key=rows.index) == first_six
    assert len(step.sampled) == G * len(rows)  # reward metrics see every sampled group
    assert step.metrics() == {"sampling/rounds": float(step.rounds), "sampling/prompts_drawn": 8.0 * step.rounds,
                              "sampling/groups_informative": float(cumulative[-1]), "sampling/groups_kept": 6.0}


def test_dynamic_sampling_stops_at_the_round_bound_and_trains_on_what_there_is(caplog):
    sampler = PromptSampler(num_examples=300, batch_size=8, seed=5)
    drawn: list = []
    with caplog.at_level(logging.WARNING, logger="golong"):
        step = sample_step(round_of(sampler, drawn), target_groups=100, filter_groups=True, max_rounds=3)
    found = sum(informative(r) for batch in drawn for r in batch)
    assert step.rounds == 3 == len(drawn) and step.prompts_drawn == 24
    assert step.train.num_groups == found < 100
    assert "dynamic_sampling.max_rounds=3" in caplog.text and f"{found} of 100 groups" in caplog.text


def test_without_dynamic_sampling_one_round_is_trained_whole():
    sampler = PromptSampler(num_examples=300, batch_size=8, seed=5)
    drawn: list = []
    step = sample_step(round_of(sampler, drawn), target_groups=8, filter_groups=False, max_rounds=32)
    assert step.rounds == 1 and step.prompts_drawn == 8 and step.train.num_groups == 8
    assert step.train is step.sampled


def test_resuming_mid_epoch_draws_the_same_batches_as_an_uninterrupted_run():
    """Steps consume a varying number of rounds; the checkpointed sampler state alone makes the resumed
    run's steps equal to the uninterrupted run's."""
    def run_steps(sampler, count):
        out = []
        for _ in range(count):
            drawn: list = []
            step = sample_step(round_of(sampler, drawn), target_groups=3, filter_groups=True, max_rounds=32)
            out.append((drawn, step.train.example_index))
        return out

    uninterrupted = PromptSampler(num_examples=50, batch_size=4, seed=11)
    reference = run_steps(uninterrupted, 8)
    assert len({len(drawn) for drawn, _ in reference}) > 1  # steps really took different numbers of rounds

    first = PromptSampler(num_examples=50, batch_size=4, seed=11)
    head = run_steps(first, 3)
    state = first.state_dict()
    assert 0 < state["cursor"] < 48 or state["epoch"] > 0
    resumed = PromptSampler(num_examples=50, batch_size=4, seed=11)
    resumed.load_state_dict(state)
    assert head + run_steps(resumed, 5) == reference


def test_sampler_counts_epochs_and_batches_as_they_are_drawn():
    sampler = PromptSampler(num_examples=10, batch_size=4, seed=0)  # 2 full batches per epoch, 2 rows dropped
    assert (sampler.epochs_completed, sampler.batches_drawn) == (0, 0)
    sampler.next_batch()
    assert (sampler.epochs_completed, sampler.batches_drawn) == (0, 1)
    sampler.next_batch()
    assert (sampler.epochs_completed, sampler.batches_drawn) == (1, 2)
    sampler.next_batch()  # the first batch of epoch 1
    assert (sampler.epochs_completed, sampler.batches_drawn) == (1, 3)


def test_total_epochs_ends_the_run_after_the_passes_really_drawn(tiny_model_path):
    cfg = load_config("recipes/tiny-cpu.yaml", [f"model.path={tiny_model_path}", "trainer.total_steps=0", "trainer.total_epochs=2",
                                                 "data.prompts_per_step=4", "algorithm.dynamic_sampling.enabled=true",
                                                 "algorithm.dynamic_sampling.prompts_per_round=8"])
    assert round_size(cfg) == 8
    sampler = PromptSampler(num_examples=40, batch_size=round_size(cfg), seed=0)  # 5 rounds per epoch
    assert estimated_total_steps(cfg, 0, sampler, 1.0) == 10  # one round per step: at most 10 steps
    steps = 0
    while not finished(cfg, steps, sampler):
        steps += 1
        for _ in range(2 if steps % 2 else 1):  # steps of 2 and 1 rounds
            sampler.next_batch()
        if steps == 2:
            assert estimated_total_steps(cfg, steps, sampler, 1.5) == 2 + 5  # 7 rounds left at 1.5 a step
    # 2+1+2+1+2+1 = 9 rounds after 6 steps; step 7 needs 2 more, so the step in progress runs past the end
    assert sampler.batches_drawn == 11 and steps == 7
    fixed = load_config("recipes/tiny-cpu.yaml", [f"model.path={tiny_model_path}", "trainer.total_steps=3"])
    assert finished(fixed, 3, sampler) and not finished(fixed, 2, sampler)
    assert estimated_total_steps(fixed, 1, sampler, 2.0) == 3


@pytest.mark.parametrize("overlong_mask", [False, True])
def test_overlong_mask_leaves_truncated_responses_out_of_the_loss(overlong_mask, tiny_model_path):
    cfg = load_config("recipes/tiny-cpu.yaml", [f"model.path={tiny_model_path}", f"rollout.overlong_mask={str(overlong_mask).lower()}"])
    prompts = PromptIds(np.array([5, 6, 7], dtype=np.int32), np.array([0, 2, 3], dtype=np.int64))
    rollouts = make_rollouts([0, 0, 1], [1.0, 0.0, 1.0], examples=[0, 0, 1], truncated=[False, True, True])
    groups = Group.from_rollouts(rollouts, prompts, torch.tensor([0.5, -0.5, 0.0]), cfg.rollout.overlong_mask)
    assert [g.loss_weights.tolist() for g in groups] == ([[1.0, 0.0], [0.0]] if overlong_mask else [[1.0, 1.0], [1.0]])
    assert [g.prompt_ids.tolist() for g in groups] == [[5, 6], [7]]
    assert [g.advantages.tolist() for g in groups] == [[0.5, -0.5], [0.0]]


def test_length_bias_compares_the_trained_groups_with_every_finished_response():
    # responses of lengths 1..4 (make_rollouts gives each one token; lengthen them by hand)
    r = make_rollouts([0, 0, 1, 1], [0.0, 1.0, 1.0, 1.0])
    r.response_ids = [np.arange(n, dtype=np.int32) for n in (1, 3, 6, 6)]
    kept = r.informative()  # group 0 only: lengths 1 and 3
    metrics = length_bias(kept, r)
    assert metrics["response_length/trained_mean"] == 2.0
    assert metrics["response_length/trained_vs_sampled"] == pytest.approx(2.0 / 4.0)
    assert length_bias(r, r)["response_length/trained_vs_sampled"] == 1.0
