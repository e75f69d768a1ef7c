"""Streaming rollouts (rollout.mode=streaming, golong/rollout/streaming.py): the sampler's take / give_back and
their resume, the seeds, the config's refusals; then the real vLLM engine on the warmed-up demo model, in one
process: partial=false trains on exactly the groups sync's selection takes from the same finished responses, each
the very responses a sync `generate` samples for its prompt and seed; partial=true continues responses across a
weight sync with their old tokens and log-probs intact and the new tokens sampled by the new weights. The 2-rank
runs with SIGKILL + resume are in tests/test_train_e2e.py."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import REPO
from golong.config import ConfigError, load_config
from golong.data.sampler import PromptSampler
from golong.rollout.streaming import StreamGroup, StreamResponse, group_base_seed, stream_seed

BASE = ["model.path=some/model"]


# ------------------------------------------------------------------------------------------------
# Sampler, seeds, config (no engine)


def test_take_crosses_epochs_each_a_permutation():
    sampler = PromptSampler(10, 4, seed=3)
    rows = sampler.take(7) + sampler.take(3) + sampler.take(6)
    assert sorted(rows[:10]) == list(range(10))  # epoch 0 used up whole, not cut at a batch boundary
    assert sampler.epoch == 1 and len(set(rows[10:])) == 6
    assert rows[10:] == PromptSampler(10, 4, seed=3)._epoch_order(1)[:6]


def test_handed_back_rows_come_first_then_the_order_goes_on():
    sampler = PromptSampler(20, 4, seed=0)
    first = sampler.take(6)
    sampler.give_back([first[4], first[1]])
    again = sampler.take(5)
    assert again[:2] == [first[4], first[1]]
    assert again[2:] == PromptSampler(20, 4, seed=0)._epoch_order(0)[6:9]
    # every row of the epoch is drawn once, counting a handed-back row once
    rest = sampler.take(20 - 9)
    assert Counter(first[:1] + first[2:4] + first[5:] + again + rest) == Counter(range(20))


def test_returned_rows_survive_a_resume():
    sampler = PromptSampler(12, 4, seed=1)
    sampler.take(5)
    sampler.give_back([7, 2])
    state = json.loads(json.dumps(sampler.state_dict()))  # as a checkpoint writes it
    resumed = PromptSampler(12, 4, seed=1)
    resumed.load_state_dict(state)
    assert resumed.take(6) == sampler.take(6)
    # a sync run resuming a streaming run's checkpoint draws the handed-back rows first too
    other = PromptSampler(12, 4, seed=1)
    other.load_state_dict(state)
    assert other.next_batch()[:2] == [7, 2]


def test_old_checkpoints_without_returned_rows_load():
    state = PromptSampler(12, 4, seed=1).state_dict()
    del state["returned"]
    sampler = PromptSampler(12, 4, seed=1)
    sampler.load_state_dict(state)
    assert sampler.returned == []


def test_stream_seeds_are_vllm_parallel_sampling_seeds_for_a_first_segment():
    base = group_base_seed(0, 17)
    assert [stream_seed(0, 17, j, 0) for j in range(4)] == [base + j for j in range(4)]
    continued = {stream_seed(0, 17, j, s) for j in range(4) for s in (1, 2)}
    assert len(continued) == 8 and not continued & {base + j for j in range(4)}
    assert group_base_seed(0, 18) != base and group_base_seed(1, 17) != base
    assert all(0 <= s < 2**62 for s in continued)


@pytest.mark.parametrize("overrides, fragment", [
    (["rollout.partial=true"], "rollout.partial"),
    (["rollout.mode=streaming", "rollout.stream_check_steps=0"], "rollout.stream_check_steps"),
    (["rollout.mode=streaming", "rollout.stream_max_groups=-1"], "rollout.stream_max_groups"),
    (["rollout.mode=streaming", "rollout.partial=true", "rollout.router_replay=true"], "rollout.router_replay"),
    (["rollout.mode=asynchronous"], "rollout.mode"),
])
def test_streaming_config_mistakes_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + overrides)
    assert fragment in str(e.value)


def test_carried_groups_round_trip_through_json():
    from golong.rollout.streaming import StreamingCollector

    group = StreamGroup(draw=5, row=3, responses=[StreamResponse([1, 2], [-0.5, -1.25], [1], False, False),
                                                  StreamResponse([4], [-2.0], [1, 2], True, True)])
    stream = StreamingCollector.__new__(StreamingCollector)
    stream.carried = [group]
    state = json.loads(json.dumps(stream.local_state()))
    other = StreamingCollector.__new__(StreamingCollector)
    other.load_local_state(state)
    assert other.carried == [group]


# ------------------------------------------------------------------------------------------------
# The real engine, one process

MAX_RESPONSE = 12
N = 4


@pytest.fixture(scope="module")
def demo_assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    subprocess.run([sys.executable, "-m", "golong", "prepare-demo", str(out), "--rows", "48"], check=True,
                   capture_output=True, env=env, cwd=REPO, timeout=300)
    return out


@pytest.fixture(scope="module")
def parts(demo_assets):
    """The world of one, the engine, the reward pool and the training prompts of the demo model."""
    from golong.data.config import DataConfig
    from golong.data.prompt_set import read_prompt_set
    from golong.model_check import load_tokenizer
    from golong.rewards import RewardConfig, RewardScorer
    from golong.rollout import RolloutConfig, RolloutEngine
    from golong.rollout.collect import RolloutCollector, stop_token_ids
    from golong.world import init_world

    world = init_world()
    model = str(demo_assets / "model")
    tokenizer = load_tokenizer(model)
    data = read_prompt_set([str(demo_assets / "train.jsonl")], DataConfig(max_prompt_length=512, enable_thinking=False),
                           tokenizer, world)
    cfg = RolloutConfig(n=N, max_response_length=MAX_RESPONSE, gpu_memory_utilization=0.3, sync_bucket_mb=1, seed=7)
    engine = RolloutEngine(cfg, model, max_model_len=512 + MAX_RESPONSE, world=world)
    scorer = RewardScorer(RewardConfig(num_workers=1))
    collector = RolloutCollector(world, engine, scorer, tokenizer, stop_token_ids(model, tokenizer), data.examples,
                                 data.prompts, data.tasks)
    yield world, engine, collector, data, model
    scorer.close()
    engine.close()


def groups_of(rollouts):
    """{group id: [(response tokens, log-probs, reward), ...]} in response order."""
    out = {}
    for k, g in enumerate(rollouts.group_index.tolist()):
        out.setdefault(g, []).append((rollouts.response_ids[k].tolist(), rollouts.rollout_logprobs[k].tolist(),
                                      float(rollouts.rewards[k])))
    return out


@pytest.mark.slow
def test_partial_false_trains_what_sync_would_from_the_same_responses(parts):
    from golong.rollout.streaming import StreamingCollector

    world, engine, collector, data, _ = parts
    stream = StreamingCollector(collector, slots=6, check_steps=1, partial=False)
    sampler = PromptSampler(len(data.examples), 4, seed=11)
    out = stream.collect_step(sampler, 4, filter_groups=True, max_prompts=40)
    sampled, train = out.sampled, out.train

    # sync's selection (dynamic sampling: informative groups, the first target of them in drawing order) applied
    # to the step's finished groups, numbered in finish order, is exactly what streaming trains
    expected = sampled.informative().first_groups(4)
    assert train.num_groups == 4 and groups_of(train) == groups_of(expected)
    assert train.example_index == expected.example_index
    for rewards in (np.array([r for _, _, r in g]) for g in groups_of(train).values()):
        assert rewards.max() > rewards.min()

    # each trained group holds the very responses a sync generate samples for its prompt with the group's seed
    # (n=4: vLLM's parallel sampling seeds child j with seed + j, as streaming seeds response j)
    for g, responses in groups_of(train).items():
        draw = stream.last_draws[g]
        row = train.example_index[train.group_index.tolist().index(g)]
        sync = engine.generate([list(data.prompts[row])], seeds=[group_base_seed(engine.cfg.seed, draw)])
        assert [ids for ids, _, _ in responses] == sync.response_ids
        np.testing.assert_array_equal(np.concatenate([np.float32(lp) for _, lp, _ in responses]),
                                      np.concatenate([np.float32(lp) for lp in sync.logprobs]))

    # the prompts: drawn = finished (trained, dropped as uninformative) + handed back (in flight, surplus)
    finished_rows = set(sampled.example_index)
    back = list(sampler.returned)
    assert back and not set(back) & set(train.example_index)
    assert out.stream["rollout/aborted"] > 0 and out.stream["rollout/carried_groups"] == 0
    drawn = sampler.cursor  # one epoch, no earlier draws
    order = sampler._epoch_order(0)[:drawn]
    assert set(order) == finished_rows | set(back)
    assert out.prompts_drawn == drawn - len(back)
    assert not engine.has_unfinished_requests()  # everything in flight was aborted: the engine can sleep and sync
    # the next step draws the handed-back prompts first
    next_rows = sampler.take(len(back))
    assert next_rows == back


@pytest.mark.slow
def test_partial_true_continues_responses_across_a_weight_sync(parts):
    from transformers import AutoModelForCausalLM

    from dist.rollout_reference import round_to_bf16, token_logprobs
    from golong.rollout.streaming import StreamingCollector

    world, engine, collector, data, model_path = parts
    stream = StreamingCollector(collector, slots=6, check_steps=1, partial=True)
    sampler = PromptSampler(len(data.examples), 4, seed=12)
    first = stream.collect_step(sampler, 2, filter_groups=False, max_prompts=0)
    assert first.train.num_groups == 2
    carried = copy.deepcopy(stream.carried)
    midway = {(g.draw, j): r for g in carried for j, r in enumerate(g.responses) if not r.finished and r.tokens}
    assert midway, "no response was stopped halfway (the test needs some)"
    assert first.stream["rollout/carried_groups"] == len(carried) and first.stream["rollout/aborted"] == 0
    assert not engine.has_unfinished_requests()

    # a new policy: every weight moved, synced into the engine as a step does
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3 * p.abs().mean())
    engine.sleep()
    engine.update_weights(policy)
    new_ref = round_to_bf16(copy.deepcopy(policy).eval())
    old_ref = round_to_bf16(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval())

    second = stream.collect_step(sampler, 8, filter_groups=False, max_prompts=0)
    done = groups_of(second.sampled)
    continued = apart = 0
    for g, responses in done.items():
        draw = stream.last_draws[g]
        row = second.sampled.example_index[second.sampled.group_index.tolist().index(g)]
        prompt = list(data.prompts[row])
        for j, (ids, logprobs, _) in enumerate(responses):
            before = midway.get((draw, j))
            if before is None:
                continue
            continued += 1
            k = len(before.tokens)
            assert ids[:k] == before.tokens  # the tokens of the old policy, kept
            assert np.array_equal(np.float32(logprobs[:k]), np.float32(before.logprobs))  # and their log-probs
            assert len(ids) > k and len(logprobs) == len(ids)
            # the old tokens' log-probs are the old policy's, the new ones the new policy's
            old = token_logprobs(old_ref, prompt, ids, 1.0)
            new = token_logprobs(new_ref, prompt, ids, 1.0)
            assert (old[:k] - torch.tensor(logprobs[:k], dtype=torch.float64)).abs().max() < 0.03
            assert (new[k:] - torch.tensor(logprobs[k:], dtype=torch.float64)).abs().max() < 0.03
            # the two policies tell apart: the old one would not have given the new tokens these log-probs
            apart += int((old[k:] - torch.tensor(logprobs[k:], dtype=torch.float64)).abs().max() > 0.1)
    assert continued, "no carried response finished in the second step"
    assert apart, "the weight change is too small to tell which policy sampled which tokens"
    # which of them the step trained is its choice; the metrics count those trained across two policies
    trained_draws = {stream.last_draws[g] for g in set(second.train.group_index.tolist())}
    spanning = sum(1 for (draw, _) in midway if draw in trained_draws)
    assert second.stream["rollout/partial_responses"] == spanning
    assert second.stream["rollout/policy_lag_max"] == (1.0 if any(d in trained_draws for d in
                                                                   {g.draw for g in carried}) else 0.0)
    stream.carried = []  # leave the engine clean for other tests
