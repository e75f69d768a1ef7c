"""Checkpoints (save, exact resume, keep-last-K, half-written folders) and the HF export.

The engine tests share one 2-rank ZeRO-3 torchrun run (tests/dist/ckpt_resume_export.py): run A trains
4 steps saving after steps 2, 3, 4 (keep_last=2) and exports; run B, a fresh engine with scrambled RNGs,
loads step 3 and replays step 4. The folder tests build checkpoint folders by hand and need no engine.
"""
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_torchrun
from golong.trainer.checkpoint import LATEST_FILE, RUN_STATE_FILE, Checkpointer, capture_rng_state, restore_rng_state
from golong.trainer.export import export_hf


@pytest.fixture(scope="module")
def zero3_run(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3_run")
    run_torchrun(os.path.join(REPO, "tests", "dist", "ckpt_resume_export.py"), [tiny_model_path, str(out)])
    summaries = [json.load(open(out / f"summary_rank{r}.json")) for r in (0, 1)]
    return out, summaries


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------------------------------------------
# 2-rank ZeRO-3


@pytest.mark.slow
@pytest.mark.multiproc
def test_resume_restores_weights_optimizer_scheduler_and_rng_exactly(zero3_run, tiny_model_path):
    out, summaries = zero3_run
    initial = load_file(os.path.join(tiny_model_path, "model.safetensors"))
    # the fresh engine of run B started from the initial weights; after load it holds run A's step-3 weights
    assert not torch.equal(initial["lm_head.weight"], load_file(out / "weights_a3.safetensors")["lm_head.weight"])
    for tag in ("3", "4"):  # right after load, and after replaying step 4
        assert_same_tensors(load_file(out / f"weights_a{tag}.safetensors"), load_file(out / f"weights_b{tag}.safetensors"))
        for rank in (0, 1):  # each rank's fp32 master partition, Adam moments and step count
            a = load_file(out / f"optim_a{tag}_rank{rank}.safetensors")
            assert {"0.master", "0.exp_avg", "0.exp_avg_sq", "0.step"} <= a.keys()
            assert_same_tensors(a, load_file(out / f"optim_b{tag}_rank{rank}.safetensors"))
    for s in summaries:
        assert s["lr_a3"] == s["lr_b3"] == [0.004] and s["lr_a4"] == s["lr_b4"] == [0.005]  # warm-up (s+1)/10 * 1e-2
        assert s["loss_a"][3] == s["loss_b4"]  # step 4 saw the same batch (drawn from the restored torch RNG)
        assert s["draws_a"] == s["draws_b"]  # python, numpy and torch RNG continue identically
        assert s["state_b"] == {"step": 3, "sampler": {"epoch": 0, "position": 24}, "extra": {"seen": [1, 3]}}
    assert summaries[0]["draws_a"] != summaries[1]["draws_a"]  # each rank got back its own RNG streams


@pytest.mark.slow
@pytest.mark.multiproc
def test_keep_last_deletes_older_checkpoints_only_after_the_new_one_is_complete(zero3_run):
    out, summaries = zero3_run
    root = out / "run" / "checkpoints"
    listing = {int(k): [n for n in v if n.startswith(("step_", ".tmp"))] for k, v in summaries[0]["listing"].items()}
    assert listing == {2: ["step_000002"], 3: ["step_000002", "step_000003"], 4: ["step_000003", "step_000004"]}
    assert (root / LATEST_FILE).read_text() == "step_000004"
    assert summaries[0]["latest"] == summaries[1]["latest"] == str(root / "step_000004")
    files = sorted(os.listdir(root / "step_000004"))
    assert files == ["local_rank_00000.json", "local_rank_00001.json", "rng_rank_00000.json", "rng_rank_00001.json",
                     RUN_STATE_FILE,
                     "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.mark.slow
@pytest.mark.multiproc
def test_export_from_zero3_loads_in_transformers_with_identical_weights(zero3_run, tiny_model_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = zero3_run
    hf = out / "run" / "hf"
    loaded = {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(hf).state_dict().items()}
    assert_same_tensors(loaded, load_file(out / "weights_a4.safetensors"))
    # the same weights as DeepSpeed's own reconstruction from the step-4 checkpoint's fp32 master partitions
    from_ckpt = get_fp32_state_dict_from_zero_checkpoint(str(out / "run" / "checkpoints"), tag="step_000004")
    assert_same_tensors(loaded, {k: v.contiguous() for k, v in from_ckpt.items()})
    # max_shard_size=1MB: several shards, each within the bound unless one tensor alone is bigger
    index = json.load(open(hf / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 2 and not (out / "run" / "hf.tmp").exists()
    for shard in shards:
        assert sum(t.numel() * t.element_size() for t in load_file(hf / shard).values()) <= 1_000_000
    original, exported = AutoTokenizer.from_pretrained(tiny_model_path), AutoTokenizer.from_pretrained(hf)
    text = "Read the context. [Answer] (A)"
    assert exported(text)["input_ids"] == original(text)["input_ids"] and exported.eos_token == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.multiproc
def test_export_loads_in_vllm_with_the_trained_weights(zero3_run, tiny_model_path):
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams

    out, _ = zero3_run
    hf = str(out / "run" / "hf")
    llm = LLM(model=hf, dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True, seed=0)
    prompt = llm.get_tokenizer()("The quick brown fox jumps over")["input_ids"]
    completion = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=6, temperature=0, logprobs=0),
                              use_tqdm=False)[0].outputs[0]
    del llm
    tokens = list(completion.token_ids)
    assert len(tokens) == 6
    vllm_logprobs = torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, tokens)])

    def transformers_logprobs(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1]
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]

    # vLLM (bf16) scores its tokens as transformers does with the exported weights (measured |diff| ~0.004),
    # far from what the untrained initial weights give (~0.5)
    assert (transformers_logprobs(hf) - vllm_logprobs).abs().max() < 0.02
    assert (transformers_logprobs(tiny_model_path) - vllm_logprobs).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------------------
# Checkpoint folders, no engine


def fake_checkpoint(root, step, complete=True, world_size=1):
    folder = root / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    if complete:
        (folder / RUN_STATE_FILE).write_text(json.dumps({"step": step, "sampler": {}, "extra": {}, "world_size": world_size}))
    return folder


def test_latest_ignores_and_removes_half_written_checkpoints(tmp_path):
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".tmp-step_000006").mkdir()  # killed while DeepSpeed wrote the shards
    fake_checkpoint(tmp_path, 8, complete=False)  # a step folder without its completion marker
    (ckpts / LATEST_FILE).write_text("step_000004")
    everything = sorted(os.listdir(ckpts))
    # A reader (golong export) of a folder a run may still be writing to finds the same checkpoint, touching nothing.
    assert Checkpointer(str(tmp_path), keep_last=2).latest(clean_up=False) == str(ckpts / "step_000004")
    assert sorted(os.listdir(ckpts)) == everything
    assert Checkpointer(str(tmp_path), keep_last=2).latest() == str(ckpts / "step_000004")
    assert sorted(os.listdir(ckpts)) == [LATEST_FILE, "step_000002", "step_000004"]


def test_latest_pointer_naming_a_deleted_folder(tmp_path):
    fake_checkpoint(tmp_path, 3)
    ckpts = tmp_path / "checkpoints"
    (ckpts / LATEST_FILE).write_text("step_000009")
    assert Checkpointer(str(tmp_path), keep_last=2).latest() == str(ckpts / "step_000003")
    assert (ckpts / LATEST_FILE).read_text() == "step_000003"  # repointed for DeepSpeed's tools
    shutil.rmtree(ckpts / "step_000003")
    assert Checkpointer(str(tmp_path), keep_last=2).latest() is None
    assert not (ckpts / LATEST_FILE).exists()


def test_latest_without_checkpoints(tmp_path):
    assert Checkpointer(str(tmp_path / "new_run"), keep_last=1).latest() is None
    with pytest.raises(ValueError, match="keep_last"):
        Checkpointer(str(tmp_path), keep_last=0)


def test_load_refuses_a_checkpoint_of_another_world_size(tmp_path):
    folder = fake_checkpoint(tmp_path, 5, world_size=8)
    with pytest.raises(RuntimeError, match="written by 8 ranks but this run has 1"):
        Checkpointer(str(tmp_path), keep_last=2).load(str(folder), engine=None)


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    saved = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.randn(4).tolist())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    restore_rng_state(saved)
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.randn(4).tolist()) == expected


# ---------------------------------------------------------------------------------------------------------
# Export of an unpartitioned model


def test_export_unpartitioned_model_replaces_the_previous_export(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model.config.use_cache = False  # as training sets it
    out = tmp_path / "hf"
    export_hf(model, tokenizer, str(out))
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    export_hf(model, tokenizer, str(out), dtype=torch.bfloat16)
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no .tmp or .old folder left
    config = json.load(open(out / "config.json"))
    assert config["dtype"] == "bfloat16" and config["use_cache"] is True
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert_same_tensors({k: v for k, v in reloaded.state_dict().items()}, expected)
    assert "model.safetensors" in os.listdir(out) and "model.safetensors.index.json" not in os.listdir(out)
    assert json.load(open(out / "generation_config.json"))["eos_token_id"] == model.generation_config.eos_token_id


def test_export_moe_writes_the_per_expert_checkpoint_layout(tmp_path):
    """transformers 5 fuses Qwen3-MoE experts into one tensor per layer; the export writes them per expert,
    the layout of the released checkpoints that vLLM loads, and reloads to the same fused weights."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                            num_experts=4, num_experts_per_tok=2)
    model = Qwen3MoeForCausalLM(config)
    export_hf(model, None, str(tmp_path / "hf"), max_shard_size="100KB")
    index = json.load(open(tmp_path / "hf" / "model.safetensors.index.json"))["weight_map"]
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in index and "model.layers.1.mlp.experts.gate_up_proj" not in index
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert_same_tensors(dict(reloaded.state_dict()), dict(model.state_dict()))
