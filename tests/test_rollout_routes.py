"""Routes recorded from the real vLLM engine on CPU (the in-process recorder) for router replay.

The reference is transformers in float32 with the weights rounded to bfloat16 (the engine's dtype)
running the same prompt + response tokens: vLLM's bf16 activations differ from it by rounding only,
so the recorded experts must equal the reference's own top-k except where the reference itself is
at a near-tie.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dist.rollout_reference import round_to_bf16
from golong.configlib import ConfigError
from golong.rollout import RolloutConfig, RolloutEngine
from golong.replay.rollout import _Chunk, assemble_routes, external_id
from golong.replay.trainer import moe_routers

PROMPTS = [[5, 6, 7, 8, 9, 30, 31, 32], [40, 41, 42], [100, 7, 300, 12, 60, 61]]
# A disagreement is a near-tie when the reference's probability mass on its own top-k exceeds that on
# the recorded experts by less than this (the tiny model's router probabilities are ~0.1-0.2 each).
NEAR_TIE = 0.01
MIN_AGREEMENT = 0.97


@pytest.fixture(scope="module")
def moe_path(tmp_path_factory) -> str:
    from golong.tiny_model import build_tiny_moe_model

    return build_tiny_moe_model(str(tmp_path_factory.mktemp("tiny_moe") / "model"))


def engine_experts(worker) -> dict[str, torch.Tensor]:
    """collective_rpc target: a copy of the engine's expert weights."""
    return {n: p.detach().clone() for n, p in worker.model_runner.get_model().named_parameters() if "experts" in n}


@pytest.fixture(scope="module")
def engine(moe_path):
    cfg = RolloutConfig(n=3, max_response_length=16, gpu_memory_utilization=0.3, sync_bucket_mb=1, seed=5,
                        router_replay=True)
    engine = RolloutEngine(cfg, moe_path, max_model_len=64)
    engine.experts_at_start = engine.llm.collective_rpc(engine_experts)[0]
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(moe_path):
    from transformers import AutoModelForCausalLM

    return round_to_bf16(AutoModelForCausalLM.from_pretrained(moe_path, dtype=torch.float32).eval())


def reference_routing(model, tokens: list[int]):
    """(own top-k (T, L, k), router probabilities (T, L, E)) of `model` on `tokens`, float32."""
    routers = moe_routers(model)
    probs, top = {}, {}

    def record(i):
        def hook(module, args, output):
            probs[i] = torch.softmax(output[0].float(), dim=-1)
            top[i] = output[2]
        return hook

    handles = [router.register_forward_hook(record(i)) for i, router in routers.items()]
    with torch.no_grad():
        model(input_ids=torch.tensor([tokens]))
    for h in handles:
        h.remove()
    return torch.stack([top[i] for i in sorted(top)], 1), torch.stack([probs[i] for i in sorted(probs)], 1)


def compare(batch, reference, layers=(0, 1)) -> tuple[int, int, float]:
    """(agreeing choices, all choices, largest probability margin of a disagreement) over `layers`."""
    agree = total = 0
    worst = 0.0
    for k, (ids, routes) in enumerate(zip(batch.response_ids, batch.routes)):
        tokens = PROMPTS[batch.prompt_index[k]] + ids
        assert routes.shape == (len(tokens) - 1, 2, 2) and routes.dtype == np.uint8
        own, probs = reference_routing(reference, tokens[:-1])
        given = torch.from_numpy(routes.astype(np.int64))
        same = (own.sort(-1).values == given.sort(-1).values).all(-1)[:, list(layers)]  # (T, layers)
        own, given, probs = own[:, list(layers)], given[:, list(layers)], probs[:, list(layers)]
        agree += int(same.sum())
        total += same.numel()
        for t, layer in (~same).nonzero().tolist():
            margin = probs[t, layer, own[t, layer]].sum() - probs[t, layer, given[t, layer]].sum()
            worst = max(worst, float(margin))
    return agree, total, worst


def test_engine_records_without_compilation_or_prefix_cache(engine):
    config = engine.llm.llm_engine.vllm_config
    assert config.cache_config.enable_prefix_caching is False
    assert config.model_config.enforce_eager is True
    assert engine.routes.source == "in_process_recorder"


def test_recorded_routes_are_vllms_experts_for_every_prompt_and_response_token(engine, reference):
    batch = engine.generate(PROMPTS, temperature=1.0)
    assert len(batch.routes) == len(batch.response_ids) == 9
    agree, total, worst = compare(batch, reference)
    print(f"vLLM-CPU bf16 recorder vs transformers (bf16 weights, fp32 activations): {agree}/{total} = "
          f"{agree / total:.4f} of (token, layer) choices agree; largest margin of a disagreement {worst:.4f}")
    assert agree / total >= MIN_AGREEMENT
    assert worst < NEAR_TIE


def test_routes_follow_a_weight_sync(engine, moe_path, reference):
    """After new router weights are loaded into the engine, the recorded routes are those of the new weights."""
    from transformers import AutoModelForCausalLM

    changed = AutoModelForCausalLM.from_pretrained(moe_path, dtype=torch.float32).eval()
    with torch.no_grad():
        for router in moe_routers(changed).values():
            router.weight.mul_(-3.0)  # other experts win
    engine.sync_weights(changed)
    batch = engine.generate(PROMPTS, temperature=1.0)
    agree, total, worst = compare(batch, round_to_bf16(changed))
    print(f"after a weight sync: {agree}/{total} agree, largest margin {worst:.4f}")
    assert agree / total >= MIN_AGREEMENT and worst < NEAR_TIE
    before = compare(batch, reference)
    assert before[0] / before[1] < 0.5  # the old weights' routes would not match


def test_syncing_the_start_weights_back_restores_the_engines_experts(engine, moe_path):
    """vLLM-CPU 0.32 leaves reloaded MoE expert weights unpacked (golong re-packs them,
    weight_sync.repack_cpu_moe_experts): after syncing other weights and then the original ones,
    the engine's expert tensors equal those it built at start-up, bit for bit."""
    from transformers import AutoModelForCausalLM

    engine.sync_weights(AutoModelForCausalLM.from_pretrained(moe_path, dtype=torch.float32).eval())
    after = engine.llm.collective_rpc(engine_experts)[0]
    assert after.keys() == engine.experts_at_start.keys() and len(after) == 4  # w13, w2 of 2 layers
    for name, tensor in after.items():
        assert torch.equal(engine.experts_at_start[name], tensor), name


def count_cpu_moe_layers(worker) -> int:
    """collective_rpc target: how many MoE layers weight_sync re-prepacks after a reload."""
    from golong.rollout.weight_sync import cpu_moe_layers

    return len(cpu_moe_layers(worker.model_runner.get_model()))


def test_the_repack_finds_every_moe_layer_whatever_the_cpu_kernel_subclass(engine):
    """On CPUs with AMX vLLM runs X86CPUUnquantizedExperts, a subclass: matching the base class by name
    missed it, so synced experts were read in the wrong layout (router agreement 0.94, found in CI)."""
    assert engine.llm.collective_rpc(count_cpu_moe_layers)[0] == 2  # the tiny MoE's two layers


def chunk(positions, tokens, expert):
    n = len(positions)
    return _Chunk(np.asarray(positions), np.asarray(tokens), np.full((n, 2, 2), expert, dtype=np.int32))


def test_assemble_routes_places_chunks_and_refuses_gaps_and_foreign_tokens():
    tokens = [7, 8, 9, 10, 11]  # 4 routed positions
    routes = assemble_routes([chunk([0, 1, 2], [7, 8, 9], 1), chunk([3], [10], 2)], tokens, 8, [0, 1])
    assert routes.dtype == np.uint8 and routes[:, 0, 0].tolist() == [1, 1, 1, 2]
    # a preempted request recomputed from position 2: the recomputed routes replace the old
    routes = assemble_routes([chunk([0, 1, 2], [7, 8, 9], 1), chunk([2, 3], [9, 10], 3)], tokens, 8, [0, 1])
    assert routes[:, 0, 0].tolist() == [1, 1, 3, 3]
    with pytest.raises(RuntimeError, match="never routed"):  # prompt tokens from a prefix cache
        assemble_routes([chunk([2, 3], [9, 10], 1)], tokens, 8, [0, 1])
    with pytest.raises(RuntimeError, match="differ from the response's tokens"):
        assemble_routes([chunk([0, 1, 2, 3], [7, 8, 99, 10], 1)], tokens, 8, [0, 1])
    assert external_id("1_0-99cccb62") == "1_0" and external_id("12") == "12"


def test_router_replay_on_a_dense_model_is_refused_at_validation(tiny_model_path, moe_path):
    from golong.config import load_config

    with pytest.raises(ConfigError, match=r"rollout.router_replay: .* is not a mixture-of-experts model"):
        load_config(None, [f"model.path={tiny_model_path}", "rollout.router_replay=true"])
    with pytest.raises(ConfigError, match=r"rollout.record_routes"):
        load_config(None, [f"model.path={tiny_model_path}", "rollout.record_routes=true"])
    assert load_config(None, [f"model.path={moe_path}", "rollout.router_replay=true"]).rollout.router_replay


def test_routes_with_tensor_parallelism_or_without_prefix_caching_are_refused_at_dry_run():
    """vLLM 0.32's routed experts come back on a TP group's first rank only (the other ranks' schedulers
    assert) and need prefix caching: `--dry-run` refuses both, naming the keys; the shipped 30B recipes pass."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    def dry_run(recipe, *overrides):
        env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
        return subprocess.run([sys.executable, "-m", "golong", "train", recipe, *overrides, "--dry-run"],
                              capture_output=True, text=True, timeout=180, cwd=REPO, env={**env, "PYTHONPATH": REPO})

    recipe = "recipes/qwen3-30b-a3b-grpo.yaml"
    refused = dry_run(recipe, "rollout.router_replay=true")
    assert refused.returncode == 2 and "\n" not in refused.stderr.strip(), refused.stderr[-2000:]
    assert refused.stderr.startswith("golong: error: rollout.router_replay: needs rollout.tensor_parallel_size=1, "
                                     "got 4: vLLM 0.32 returns routed experts on the first rank")
    assert "Fix: set rollout.tensor_parallel_size=1" in refused.stderr
    refused = dry_run(recipe, "rollout.record_routes=true", "rollout.tensor_parallel_size=1",
                      "rollout.enable_prefix_caching=false")
    assert refused.returncode == 2
    assert refused.stderr.startswith("golong: error: rollout.enable_prefix_caching: false with rollout.record_routes")
    for shipped in (recipe, "recipes/qwen3-30b-a3b-tmn-reweight.yaml"):
        assert dry_run(shipped).returncode == 0
