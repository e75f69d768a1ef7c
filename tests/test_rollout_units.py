"""Rollout pieces that need no engine: weight-sync bucket plan, memory count, metrics, config checks."""
from __future__ import annotations

import pytest
import torch

from golong.configlib import ConfigError, build
from golong.rollout import RolloutConfig, RolloutEngine, logprob_abs_diff
from golong.rollout.weight_sync import extra_bytes, plan_buckets

# The tiny model's decoder layer: q 128x128, k and v 64x128, o 128x128, q/k norms 64 each, two
# layer norms 128 each, gate/up 256x128, down 128x256.
LAYER_PARAMS = 16384 + 2 * 8192 + 16384 + 2 * 64 + 2 * 128 + 3 * 32768  # 147,840
LAYER_BYTES = 4 * LAYER_PARAMS  # float32


def tiny_qwen3(tied: bool) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, tie_word_embeddings=tied)
    with torch.device("meta"):
        return Qwen3ForCausalLM(config)


def bucket_names(buckets) -> list[list[str]]:
    """Each bucket as the distinct decoder layers / parameters it holds."""
    short = []
    for bucket in buckets:
        units = []
        for name in bucket.names:
            unit = ".".join(name.split(".")[:3]) if ".layers." in name else name
            if unit not in units:
                units.append(unit)
        short.append(units)
    return short


@pytest.mark.parametrize("bucket_bytes, expected", [
    (2 * LAYER_BYTES, [["model.embed_tokens.weight"], ["model.layers.0", "model.layers.1"],
                       ["model.norm.weight"], ["lm_head.weight"]]),
    (2 * LAYER_BYTES - 1, [["model.embed_tokens.weight"], ["model.layers.0"], ["model.layers.1"],
                           ["model.norm.weight"], ["lm_head.weight"]]),
    (1, [["model.embed_tokens.weight"], ["model.layers.0"], ["model.layers.1"],  # a layer alone when too big
         ["model.norm.weight"], ["lm_head.weight"]]),
    (10**12, [["model.embed_tokens.weight"], ["model.layers.0", "model.layers.1"],  # never the whole model
              ["model.norm.weight"], ["lm_head.weight"]]),
])
def test_buckets_hold_whole_layers_within_the_budget(bucket_bytes, expected):
    model = tiny_qwen3(tied=False)
    buckets = plan_buckets(list(model.named_parameters()), bucket_bytes)
    assert bucket_names(buckets) == expected
    assert [name for b in buckets for name in b.names] == [name for name, _ in model.named_parameters()]
    layer_buckets = [b for b in buckets if b.layer]
    assert all(b.nbytes % LAYER_BYTES == 0 and b.nbytes >= LAYER_BYTES for b in layer_buckets)
    assert buckets[0].nbytes == 512 * 128 * 4


def test_tied_embedding_is_sent_once_under_its_embedding_name():
    buckets = plan_buckets(list(tiny_qwen3(tied=True).named_parameters()), 2 * LAYER_BYTES)
    assert bucket_names(buckets) == [["model.embed_tokens.weight"], ["model.layers.0", "model.layers.1"],
                                     ["model.norm.weight"]]


def test_extra_bytes_counts_the_engine_dtype_copy_of_a_plain_model():
    buckets = plan_buckets(list(tiny_qwen3(tied=False).named_parameters()), LAYER_BYTES)
    assert extra_bytes(buckets[1], torch.bfloat16) == 2 * LAYER_PARAMS
    assert extra_bytes(buckets[1], torch.float32) == 0  # same dtype: no copy, nothing gathered


def test_logprob_abs_diff_is_the_token_mean():
    trainer = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    rollout = torch.tensor([-1.5, -2.0, -0.25, -2.0])
    assert logprob_abs_diff(trainer, rollout) == pytest.approx((0.5 + 0 + 0.25 + 1.0) / 4)
    assert logprob_abs_diff(torch.zeros(0), torch.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="equal length"):
        logprob_abs_diff(trainer, rollout[:3])


@pytest.mark.parametrize("key, value", [("tensor_parallel_size", 0), ("gpu_memory_utilization", 1.5),
                                        ("sync_bucket_mb", 0), ("cpu_kvcache_space_gib", 0)])
def test_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=key):
        build(RolloutConfig, {key: value})


def test_engine_rejects_a_tensor_parallel_size_the_world_cannot_hold():
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size: 2 does not divide the 1 ranks"):
        RolloutEngine(RolloutConfig(tensor_parallel_size=2), "unused", max_model_len=100_000)
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        RolloutEngine(RolloutConfig(max_response_length=64), "unused", max_model_len=64)


def test_request_seeds_are_a_pure_function_of_seed_step_and_prompt():
    from golong.rollout.engine import request_seeds

    seeds = request_seeds(3, 7, [0, 1, 2, 3])
    assert seeds == request_seeds(3, 7, [0, 1, 2, 3])  # another rank, another process: the same
    assert request_seeds(3, 7, [2, 3]) == seeds[2:]  # a prompt's seed does not depend on its neighbours
    assert len(set(seeds)) == 4  # prompts of one step differ
    assert not set(seeds) & set(request_seeds(3, 8, [0, 1, 2, 3]))  # the next step differs
    assert not set(seeds) & set(request_seeds(4, 7, [0, 1, 2, 3]))  # another rollout.seed differs
    # vLLM gives a request's n samples seed + 0 .. n - 1: all stay within int64
    assert all(0 <= s < 2**62 for s in seeds)


def test_sleep_state_accepts_the_step_order_and_refuses_every_other():
    from golong.rollout.engine import SleepState

    for level in (1, 2):
        state = SleepState(level)
        for _ in range(2):  # two steps
            state.generate(); state.generate()  # dynamic sampling: rounds
            state.sleep(); state.wake_up_weights(); state.sync(); state.wake_up_kv_cache()
        state.sync()  # awake: a sync with the KV cache up is allowed (no memory bound, no wrong data)
    state = SleepState(2)
    state.sleep()
    with pytest.raises(RuntimeError, match="generate while asleep"):
        state.generate()
    with pytest.raises(RuntimeError, match="sync_weights while asleep"):  # CUDA: the weights are unmapped
        state.sync()
    with pytest.raises(RuntimeError, match="wake_up_kv_cache while asleep"):
        state.wake_up_kv_cache()
    state.wake_up_weights()
    with pytest.raises(RuntimeError, match="dropped the weights: call sync_weights"):  # level 2: garbage weights
        state.wake_up_kv_cache()
    with pytest.raises(RuntimeError, match="generate while weights_awake"):
        state.generate()
    level1 = SleepState(1)
    level1.sleep(); level1.wake_up_weights(); level1.wake_up_kv_cache()  # level 1 kept the weights: allowed
    with pytest.raises(RuntimeError, match="wake_up_weights while awake"):
        level1.wake_up_weights()
    never = SleepState(0)  # sleep_level 0: sleep and wake change nothing
    never.sleep(); never.generate(); never.wake_up_kv_cache(); never.sync(); never.generate()
