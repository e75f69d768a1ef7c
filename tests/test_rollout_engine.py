"""RolloutEngine with the real vLLM on CPU (one engine for the whole module): groups, log-probs,
truncation, length filter, and weight sync from a plain (not partitioned) transformers model.

The reference log-probs come from transformers in float32 with the weights rounded to bfloat16
(the engine's dtype), so what is left is vLLM computing its activations in bfloat16.
"""
from __future__ import annotations

import pytest
import torch

from dist.rollout_reference import greedy_gap, round_to_bf16, token_logprobs
from golong.rollout import RolloutConfig, RolloutEngine

pytestmark = pytest.mark.slow

MAX_MODEL_LEN = 64
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 7, 300, 12, 60, 61, 62, 63, 64]]
# Bounds on |vLLM - transformers| per token log-prob at T = 0.7 (bf16 activations vs float32, same
# bf16 weights); measured on the tiny model: max 0.006, mean 0.0015.
MAX_ABS_BOUND, MEAN_ABS_BOUND = 0.02, 0.005
NEAR_TIE = 0.02  # logits: a greedy token may trail the best one by this much (bf16 activations)


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    cfg = RolloutConfig(n=4, max_response_length=8, gpu_memory_utilization=0.3, sync_bucket_mb=1, seed=3)
    engine = RolloutEngine(cfg, tiny_model_path, max_model_len=MAX_MODEL_LEN)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return round_to_bf16(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval())


@pytest.fixture(scope="module")
def sampled(engine):
    """Four responses per prompt at temperature 0.7, so processed and raw log-probs differ."""
    return engine.generate(PROMPTS, temperature=0.7)


def test_engine_is_one_data_parallel_group_alone(engine):
    assert (engine.layout.rollout_dp_rank, engine.layout.rollout_dp_size) == (0, 1)


def test_responses_come_back_grouped_in_prompt_order(sampled):
    assert sampled.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    assert sampled.num_filtered == 0
    for ids, logprobs in zip(sampled.response_ids, sampled.logprobs):
        assert 1 <= len(ids) <= 8 and len(logprobs) == len(ids)
    # G samples of one prompt are different draws, not copies
    assert len({tuple(ids) for ids in sampled.response_ids[:4]}) > 1


def test_logprobs_are_processed_logprobs_of_the_right_prompt(sampled, reference):
    """Each response's log-probs match transformers' log softmax(logits / 0.7) given ITS prompt:
    this also proves the alignment (another prompt gives other log-probs) and that vLLM returns
    log-probs after temperature (the raw ones, T = 1, are far off)."""
    processed, raw, other_prompt = [], [], []
    for index, ids, logprobs in zip(sampled.prompt_index, sampled.response_ids, sampled.logprobs):
        vllm = torch.tensor(logprobs, dtype=torch.float64)
        processed.append(token_logprobs(reference, PROMPTS[index], ids, 0.7) - vllm)
        raw.append(token_logprobs(reference, PROMPTS[index], ids, 1.0) - vllm)
        other_prompt.append(token_logprobs(reference, PROMPTS[(index + 1) % 3], ids, 0.7) - vllm)
    processed, raw, other_prompt = (torch.cat(d).abs() for d in (processed, raw, other_prompt))
    assert processed.max() < MAX_ABS_BOUND and processed.mean() < MEAN_ABS_BOUND, (processed.max(), processed.mean())
    # measured: raw 0.08, other prompt 0.3 (the tiny random model's logits are nearly flat)
    assert raw.mean() > 4 * MEAN_ABS_BOUND
    assert other_prompt.mean() > 4 * MEAN_ABS_BOUND


def test_truncation_flags_with_tiny_max_tokens(engine):
    batch = engine.generate(PROMPTS, n=2, max_tokens=3)
    assert [len(ids) for ids in batch.response_ids] == [3] * 6
    assert batch.truncated == [True] * 6


def test_prompts_that_leave_no_room_for_max_tokens_are_filtered(engine):
    fits = list(range(10, 10 + MAX_MODEL_LEN - 8))  # 56 + 8 = 64: exactly fits
    one_over = fits + [3]  # 57 + 8 > 64
    prompts = [fits, one_over, [7] * 100, [5, 6, 7]]
    batch = engine.generate(prompts, n=2, max_tokens=8)
    assert batch.num_filtered == 2 and batch.prompt_index == [0, 0, 3, 3]  # prompts 1 and 2 filtered
    # the rule is prompt + max_tokens: with 2 new tokens the 57-token prompt fits
    narrow = engine.generate(prompts, n=1, max_tokens=2)
    assert narrow.num_filtered == 1 and narrow.prompt_index == [0, 1, 3]


def test_all_prompts_filtered_gives_an_empty_batch(engine):
    batch = engine.generate([[1] * 60], n=2, max_tokens=8)
    assert batch.num_filtered == 1 and batch.response_ids == [] and batch.prompt_index == []
    assert batch.logprobs == [] and batch.truncated == []


def eos_only_model(model, eos: int) -> None:
    """Make every next-token distribution put ~all mass on EOS: with o_proj and down_proj zero the
    last hidden state is the token's embedding; all embeddings are e0, and only EOS's lm_head row
    reads e0 (logit 4 * sqrt(hidden) = 45 against 0)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()[:, 0] = 1.0
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()[eos, 0] = 4.0


def test_sync_from_a_plain_model(engine, tiny_model_path, reference):
    """Not partitioned (ZeRO 0-2 or no DeepSpeed): vLLM then continues exactly like transformers
    with the new weights; an always-EOS model shows EOS stays in response_ids with reason 'stop'."""
    from transformers import AutoModelForCausalLM

    before = engine.generate(PROMPTS, n=1, temperature=0.0).response_ids
    # vLLM's activations are bf16: on a random model it may take the other side of a near-tie (measured: a
    # 0.002 logit gap), after which the continuations differ; every token must still be (nearly) greedy.
    assert max(greedy_gap(reference, p, r) for p, r in zip(PROMPTS, before)) < NEAR_TIE

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    try:
        stats = engine.sync_weights(model)
        # sync_bucket_mb=1 fits one 147,840-parameter decoder layer: embedding, layer 0, layer 1,
        # norm, lm_head. The largest bucket, a layer, costs its bf16 copy: 2 bytes a parameter.
        assert stats.num_buckets == 5
        assert stats.peak_extra_bytes == 147_840 * 2
        after = engine.generate(PROMPTS, n=1, temperature=0.0).response_ids
        round_to_bf16(model)
        assert max(greedy_gap(model, p, r) for p, r in zip(PROMPTS, after)) < NEAR_TIE
        assert after != before
        stale = max(greedy_gap(reference, p, r) for p, r in zip(PROMPTS, after))
        assert stale > 10 * NEAR_TIE  # the old weights would not have chosen them: the sync was applied

        eos = model.generation_config.eos_token_id[0]
        eos_only_model(model, eos)
        engine.sync_weights(model)
        batch = engine.generate(PROMPTS, n=2, max_tokens=8)
        assert batch.response_ids == [[eos]] * 6
        assert batch.truncated == [False] * 6
        assert max(abs(lp[0]) for lp in batch.logprobs) < 1e-4
    finally:
        engine.sync_weights(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32))
    assert engine.generate(PROMPTS, n=1, temperature=0.0).response_ids == before


class ConfigRecordingWeights:
    """A weights iterator that records, each time vLLM's reload takes a weight, the vLLM config current then."""

    def __init__(self, weights):
        self.weights, self.seen = iter(weights), []

    def __iter__(self):
        return self

    def __next__(self):
        from vllm.config import get_current_vllm_config_or_none

        self.seen.append(get_current_vllm_config_or_none())
        return next(self.weights)


def reload_recording_config(worker, weights) -> tuple[int, int]:
    """collective_rpc target: golong's in-place reload; (weights taken, taken under the worker's own config)."""
    from golong.rollout.weight_sync import reload_weights_in_place

    recording = ConfigRecordingWeights(weights)
    reload_weights_in_place(worker, recording)
    return len(recording.seen), sum(config is worker.vllm_config for config in recording.seen)


def test_reload_runs_under_the_workers_vllm_config(engine, tiny_model_path):
    """As vLLM's Worker.reload_weights: layer loaders and process_weights_after_loading may call
    get_current_vllm_config(), which raises outside set_current_vllm_config. Reloads the original
    weights, so the engine ends as it started."""
    from transformers import AutoModelForCausalLM

    from golong.rollout.weight_sync import gathered_weights, plan_buckets

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    weights = gathered_weights(model, plan_buckets(list(model.named_parameters()), 2**20), torch.bfloat16)
    ((taken, under_worker_config),) = engine.llm.collective_rpc(reload_recording_config, args=(weights,))
    assert taken == len(list(model.named_parameters())) + 1  # the last call ends the iteration
    assert under_worker_config == taken
    engine.llm.reset_prefix_cache()


def test_per_request_seeds_fix_the_samples(engine):
    """At temperature 1 the same seeds give the same responses whatever the engine served in between;
    other seeds give other responses; the engine records the seeds it asked vLLM for."""
    from golong.rollout.engine import request_seeds

    seeds = request_seeds(3, 0, range(len(PROMPTS)))
    first = engine.generate(PROMPTS, seeds=seeds, temperature=1.0)
    assert engine.last_seeds == seeds
    engine.generate(PROMPTS, temperature=1.0)  # unseeded: moves vLLM's engine-wide generator on
    again = engine.generate(PROMPTS, seeds=seeds, temperature=1.0)
    assert again.response_ids == first.response_ids
    other = engine.generate(PROMPTS, seeds=request_seeds(3, 1, range(len(PROMPTS))), temperature=1.0)
    assert other.response_ids != first.response_ids
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        engine.generate(PROMPTS, seeds=seeds[:2])


def test_the_engine_refuses_steps_out_of_order_on_cpu_too(engine, tiny_model_path):
    """sleep_level 2 (the default): vLLM-CPU has no sleep mode, but the engine checks the order it would need."""
    from transformers import AutoModelForCausalLM

    assert engine.cfg.sleep_level == 2 and not engine.sleep_mode
    engine.sleep()
    with pytest.raises(RuntimeError, match="generate while asleep"):
        engine.generate(PROMPTS, n=1)
    engine.wake_up_weights()
    with pytest.raises(RuntimeError, match="dropped the weights: call sync_weights"):
        engine.wake_up_kv_cache()
    engine.sync_weights(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32))
    engine.wake_up_kv_cache()
    assert len(engine.generate(PROMPTS, n=1, max_tokens=2).response_ids) == 3


def test_seeded_prompts_beyond_one_step_token_budget(engine):
    """A round whose prompts hold more tokens than one engine step schedules (4,096): with per-request seeds,
    a prefill chunked over two steps made vLLM-CPU rewind the request's generator ("CPU Generator does not use
    offset", the demo's first step). On CPU the engine schedules whole prefills only."""
    prompts = [[5 + (i + j) % 50 for j in range(50)] for i in range(100)]  # 5,000 prompt tokens
    seeds = list(range(1000, 1100))
    first = engine.generate(prompts, seeds=seeds, n=1, max_tokens=2)
    again = engine.generate(prompts, seeds=seeds, n=1, max_tokens=2)
    assert len(first.response_ids) == 100 and first.response_ids == again.response_ids
