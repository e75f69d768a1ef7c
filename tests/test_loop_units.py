"""Pieces of the training loop that need no engine: dynamic sampling's group filter."""
import numpy as np
import torch

from golong.trainer.loop import Rollouts, concat_rollouts, informative_groups


def make_rollouts(groups, rewards):
    n = len(groups)
    return Rollouts(example_index=list(range(n)), group_index=torch.tensor(groups), task_index=torch.zeros(n, dtype=torch.long),
                    response_ids=[np.array([i], dtype=np.int32) for i in range(n)],
                    rollout_logprobs=[np.zeros(1, dtype=np.float32) for _ in range(n)],
                    truncated=np.zeros(n, dtype=bool), rewards=torch.tensor(rewards, dtype=torch.float64),
                    reward_timeouts=0, reward_errors=1, num_filtered=0, generation_tokens_per_s=1.0)


def test_groups_whose_rewards_all_agree_are_dropped_in_order():
    # group 7: all 1 (dropped); group 2: 0 and 0.5 (kept); group 5: all 0 (dropped); group 9: continuous, differs
    r = make_rollouts([7, 2, 7, 5, 2, 9, 5, 9], [1.0, 0.0, 1.0, 0.0, 0.5, 0.3, 0.0, 0.30001])
    kept = informative_groups(r)
    assert kept.group_index.tolist() == [2, 2, 9, 9]
    assert kept.example_index == [1, 4, 5, 7]
    assert kept.rewards.tolist() == [0.0, 0.5, 0.3, 0.30001]
    assert [ids.tolist() for ids in kept.response_ids] == [[1], [4], [5], [7]]


def test_a_batch_with_nothing_to_learn_gives_an_empty_selection_and_concat_adds_up():
    r = make_rollouts([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])
    empty = informative_groups(r)
    assert len(empty) == 0
    both = concat_rollouts(r, make_rollouts([3, 3], [0.0, 1.0]))
    assert both.group_index.tolist() == [0, 0, 1, 1, 3, 3] and both.reward_errors == 2
