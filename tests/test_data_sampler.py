"""PromptSampler: uniform sampling without replacement per epoch (Eq. 4) and exact resume."""
import json
import random
from collections import Counter

import pytest

from golong.data.sampler import PromptSampler


def draw(sampler: PromptSampler, steps: int) -> list[list[int]]:
    return [sampler.next_batch() for _ in range(steps)]


def test_each_epoch_is_a_permutation_cut_into_full_batches():
    s = PromptSampler(num_examples=10, batch_size=3, seed=7)
    assert s.steps_per_epoch == 3
    first = draw(s, 3)
    assert s.epoch == 0 and all(len(b) == 3 for b in first)
    flat = [i for b in first for i in b]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))  # no repeats; one example left over
    second = s.next_batch()  # the leftover is dropped and epoch 1 starts with a new order
    assert s.epoch == 1 and len(second) == 3
    assert draw(PromptSampler(10, 3, seed=7), 4) == first + [second]  # a pure function of the seed
    assert draw(PromptSampler(10, 3, seed=8), 3) != first


def test_every_example_drawn_once_per_epoch_so_tasks_keep_their_data_share():
    # Eq. 4: tasks are drawn in proportion to their share of the data. 12 rows, 4 per batch:
    # every epoch covers every row exactly once, whatever the order.
    tasks = ["T1"] * 6 + ["T2"] * 4 + ["T8"] * 2
    s = PromptSampler(len(tasks), 4, seed=3)
    for epoch in range(3):
        batches = draw(s, s.steps_per_epoch)
        assert sorted(i for b in batches for i in b) == list(range(12))
        assert Counter(tasks[i] for b in batches for i in b) == {"T1": 6, "T2": 4, "T8": 2}
    orders = [draw(PromptSampler(12, 12, seed=3), 3)[e] for e in range(3)]
    assert len({tuple(o) for o in orders}) == 3  # a fresh order every epoch


@pytest.mark.parametrize("stop_after", [2, 3, 5])  # mid-epoch, at the epoch boundary, in epoch 1
def test_resume_sees_the_same_batches(stop_after):
    uninterrupted = draw(PromptSampler(10, 3, seed=11), 8)
    before = PromptSampler(10, 3, seed=11)
    seen = draw(before, stop_after)
    state = json.loads(json.dumps(before.state_dict()))  # checkpoints store it as plain data
    resumed = PromptSampler(10, 3, seed=11)
    resumed.load_state_dict(state)
    assert seen + draw(resumed, 8 - stop_after) == uninterrupted


def test_resume_with_other_data_settings_is_refused():
    state = PromptSampler(10, 3, seed=11).state_dict()
    with pytest.raises(ValueError, match="num_examples=10 but this run has 12"):
        PromptSampler(12, 3, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(10, 3, seed=12).load_state_dict(state)


def test_keep_last_batch_and_no_shuffle():
    s = PromptSampler(7, 3, seed=0, shuffle=False, drop_last=False)
    assert s.steps_per_epoch == 3
    assert draw(s, 4) == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]


def test_batch_larger_than_dataset_is_an_error_that_says_what_to_set():
    with pytest.raises(ValueError, match="prompts_per_step to at most 5"):
        PromptSampler(5, 8, seed=0)


def test_global_rng_untouched():
    random.seed(123)
    state = random.getstate()
    draw(PromptSampler(50, 7, seed=1), 20)
    assert random.getstate() == state
