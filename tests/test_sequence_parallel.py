"""Sequence parallelism (trainer.sequence_parallel_size): row sharding, SP groups, head checks, and the
equivalence of an SP group with one rank under the real DeepSpeed ZeRO-3 (gloo, torchrun)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, free_port, run_torchrun
from golong.config import load_config
from golong.configlib import ConfigError
from golong.tiny_model import TinyModelSpec, build_tiny_model
from golong.trainer.batch import Group, pack_groups
from golong.trainer.config import TrainerConfig
from golong.trainer.packing import plan_step
from golong.trainer.sequence_parallel import check_heads, gradient_scale, pad_inputs, shard_inputs, valid_sizes
from golong.world import ParallelLayout

DIST = os.path.join(REPO, "tests", "dist")


def samples(*shapes):
    """Packed: one plain `prompt + response` sequence per (prompt length, response length)."""
    return [Group(prompt_ids=list(range(10, 10 + p)), response_ids=[list(range(50, 50 + r))], advantages=1.0)
            for p, r in shapes]


def row_inputs(mb):
    return dict(input_ids=mb.input_ids, position_ids=mb.position_ids, cu_seqlens=mb.cu_seqlens,
                max_seqlen=mb.max_seqlen, logit_positions=mb.logit_positions, labels=mb.labels)


def shards(mb, sp):
    padded = pad_inputs(row_inputs(mb), sp)
    return [shard_inputs(padded, ParallelLayout(world_size=sp, rank=rank, sp=sp)) for rank in range(sp)]


# ------------------------------------------------------------------------------------------------
# Sharding a packed row


@pytest.mark.parametrize("shapes,sp", [
    ([(5, 7), (9, 4)], 2),  # 25 tokens: one filler token
    ([(3, 3), (4, 2)], 2),  # a sequence boundary on the shard edge
    ([(5, 5)], 2),  # the first response token is predicted by the first shard's last position
    ([(7, 3)], 2),  # the first shard predicts no response token
    ([(2, 9), (4, 4), (1, 1)], 4),  # 21 tokens, sp = 4: three filler tokens
])
def test_shards_partition_the_row_and_its_response_tokens(shapes, sp):
    mb = pack_groups(samples(*shapes))
    parts = shards(mb, sp)
    T = mb.num_tokens
    padded = -(-T // sp) * sp
    assert all(p.row_tokens == padded for p in parts)
    row = torch.cat([p.inputs["input_ids"] for p in parts], dim=1)
    assert row.shape == (1, padded) and torch.equal(row[:, :T], mb.input_ids) and not row[:, T:].any()
    positions = torch.cat([p.inputs["position_ids"] for p in parts], dim=1)
    assert torch.equal(positions[:, :T], mb.position_ids)
    last_start = int(mb.cu_seqlens[-2])  # fillers continue the last sequence's positions
    assert positions[0, T:].tolist() == list(range(T - last_start, T - last_start + padded - T))
    # every rank sees the whole row's boundaries, the last sequence grown by the filler
    for p in parts:
        assert p.inputs["cu_seqlens"].tolist() == mb.cu_seqlens.tolist()[:-1] + [padded]
        assert p.inputs["max_seqlen"] == max(mb.max_seqlen, padded - last_start)
    # each response token is predicted on exactly one shard, at its row position minus the shard start
    owned = torch.stack([p.owned for p in parts])
    assert owned.sum(0).tolist() == [1] * mb.labels.numel()
    width = padded // sp
    for rank, p in enumerate(parts):
        assert torch.equal(p.inputs["logit_positions"] + rank * width, mb.logit_positions[p.owned])
        assert torch.equal(p.inputs["labels"], mb.labels[p.owned])
        assert ((p.inputs["logit_positions"] >= 0) & (p.inputs["logit_positions"] < width)).all()


def test_a_label_from_the_next_shard_and_an_empty_shard():
    mb = pack_groups(samples((5, 5)))  # tokens 0-4 prompt, 5-9 response; shards [0, 5) and [5, 10)
    first, second = shards(mb, 2)
    assert first.inputs["logit_positions"].tolist() == [4]  # predicts row token 5, held by the next shard
    assert first.inputs["labels"].tolist() == [50]
    assert second.inputs["logit_positions"].tolist() == [0, 1, 2, 3]
    mb = pack_groups(samples((7, 3)))
    first, second = shards(mb, 2)
    assert first.inputs["logit_positions"].numel() == 0 and first.inputs["labels"].numel() == 0
    assert second.inputs["logit_positions"].tolist() == [1, 2, 3]


def test_padding_is_a_no_op_on_a_multiple_and_unpadded_rows_are_refused():
    inputs = row_inputs(pack_groups(samples((3, 3))))
    assert pad_inputs(inputs, 3) is inputs
    with pytest.raises(ValueError, match="pad it first"):
        shard_inputs(inputs, ParallelLayout(world_size=4, rank=0, sp=4))


def shards_of(inputs, sp):
    return [shard_inputs(inputs, ParallelLayout(world_size=sp, rank=rank, sp=sp)) for rank in range(sp)]


def test_unknown_row_kwargs_pass_through_every_shard_unchanged():
    inputs = {**row_inputs(pack_groups(samples((3, 5)))), "group_layout": torch.tensor([0, 3, 8])}
    for part in shards_of(inputs, 2):
        assert part.inputs["group_layout"] is inputs["group_layout"]


# ------------------------------------------------------------------------------------------------
# Groups, denominators, gradient scale


def test_layout_groups_consecutive_ranks():
    layouts = [ParallelLayout(world_size=8, rank=r, tp=4, sp=2) for r in range(8)]
    assert [(lay.sp_rank, lay.dp_rank) for lay in layouts[:4]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [lay.counts_once for lay in layouts[:4]] == [True, False, True, False]
    assert layouts[3].dp_size == 4 and ParallelLayout(world_size=4, rank=3).dp_size == 4
    assert [layouts[r].dp_rank_of(r2) for r, r2 in ((0, 5), (7, 1))] == [2, 0]
    # vLLM's TP groups of 4: two engines, each rank's share and whether it keeps its group's copy
    assert [(lay.rollout_dp_rank, lay.leads_tp_group) for lay in layouts] == [
        (0, True), (0, False), (0, False), (0, False), (1, True), (1, False), (1, False), (1, False)]
    assert layouts[0].rollout_dp_size == 2
    with pytest.raises(ConfigError, match="trainer.sequence_parallel_size: 3 does not divide the 4 ranks of this run"):
        ParallelLayout(world_size=4, rank=0, sp=3)
    with pytest.raises(ConfigError, match="rollout.tensor_parallel_size: 0 does not divide.*Fix: use a divisor of 4, e.g. 1"):
        ParallelLayout(world_size=4, rank=0, tp=0)
    with pytest.raises(ValueError, match="rank 4 is outside a world of 4"):
        ParallelLayout(world_size=4, rank=4)
    # a component gets the run's layout, checked against its own config, or one of its world
    assert ParallelLayout.for_component(layouts[5], None, tp=4, sp=2) is layouts[5]
    with pytest.raises(ValueError, match="the run's layout has sp=2, the component's config 1"):
        ParallelLayout.for_component(layouts[5], None, sp=1)


def test_denominator_units_are_counted_once_per_group():
    groups = samples((1, 2), (3, 4))

    def step(rank, sp):
        return plan_step(groups, ParallelLayout(world_size=2, rank=rank, sp=sp), max_tokens_per_rank=100, share_prompt=True)

    def ids(units):
        return [id(u) for u in units]

    first, second = step(0, 2), step(1, 2)  # one SP group of both ranks: the same units, counted on its first
    assert ids(first.units) == ids(second.units) and len(first.units) == 2
    assert ids(first.counted) == ids(first.units) and second.counted == []
    assert len(first.micro_batches) == len(second.micro_batches)
    # a sum over both ranks (the denominator's all-reduce) sees the 2 + 4 response tokens once
    assert sum(int(u.response_lengths[u.in_loss].sum()) for b in (first, second) for u in b.counted) == 6
    dp = [step(rank, 1) for rank in range(2)]  # sp = 1: each rank counts its own share
    assert all(ids(b.counted) == ids(b.units) and len(b.units) == 1 for b in dp)
    assert sorted(id(u) for b in dp for u in b.units) == sorted(ids(groups))


def test_gradient_scale_undoes_deepspeeds_division():
    zero3 = {"zero_optimization": {"stage": 3}}
    assert gradient_scale(zero3, 4, 1) == 4
    assert gradient_scale(zero3, 4, 2) == 4  # ZeRO-3 reduce-scatter divides by all sp x dp ranks
    assert gradient_scale({"zero_optimization": {"stage": 2}}, 4, 2) == 2  # ZeRO-1/2 divide by world / sp
    with pytest.raises(ValueError, match="reduce_scatter"):
        gradient_scale({"zero_optimization": {"stage": 3, "reduce_scatter": False}}, 4, 2)


# ------------------------------------------------------------------------------------------------
# Heads and config validation


def test_valid_sizes_follow_ulysses_head_rules():
    assert valid_sizes(32, 8) == [1, 2, 4, 8, 16, 32]  # Qwen3-4B: KV heads repeated beyond 8
    assert valid_sizes(32, 4) == [1, 2, 4, 8, 16, 32]  # Qwen3-30B-A3B
    assert valid_sizes(12, 8) == [1, 2, 4]  # 8 KV heads: 3 and 6 neither divide nor are divided
    assert valid_sizes(32, 8, world_size=8) == [1, 2, 4, 8]
    check_heads(2, 1, 2)  # fewer KV heads than sp: repeated
    with pytest.raises(ConfigError, match=r"trainer.sequence_parallel_size: 3 cannot split .*12 query heads, 8 KV "
                                          r"heads.*use one of \[1, 2, 4\]"):
        check_heads(12, 8, 3)


def test_config_refuses_a_model_whose_heads_cannot_be_split(tiny_model_path, tmp_path):
    three_heads = build_tiny_model(str(tmp_path / "three"), spec=TinyModelSpec(num_heads=3, num_kv_heads=1))
    recipe = os.path.join(REPO, "recipes", "tiny-cpu.yaml")
    with pytest.raises(ConfigError, match=r"trainer.sequence_parallel_size: 2 cannot split .*3 query heads.*\[1, 3\]"):
        load_config(recipe, [f"model.path={three_heads}", "trainer.sequence_parallel_size=2"])
    cfg = load_config(recipe, [f"model.path={tiny_model_path}", "trainer.sequence_parallel_size=2"])
    assert cfg.trainer.sequence_parallel_size == 2
    with pytest.raises(ConfigError, match="sequence_parallel_size: must be at least 1"):
        load_config(recipe, [f"model.path={tiny_model_path}", "trainer.sequence_parallel_size=0"])


def test_trainer_config_refuses_zero3_without_reduce_scatter():
    cfg = TrainerConfig(sequence_parallel_size=2, deepspeed={"zero_optimization": {"reduce_scatter": False}})
    with pytest.raises(ConfigError, match="reduce_scatter"):
        cfg.validate()


# ------------------------------------------------------------------------------------------------
# The real thing: an SP group of 2 ranks against one rank, ZeRO-3, gloo


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def one_rank(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("sp1") / "one.pt"
    run_torchrun(os.path.join(DIST, "sequence_parallel_equiv.py"), [tiny_model_path, str(out), "1"], nproc=1, timeout=900)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("nproc", [2, 4])  # sp = 2 x dp = 1, sp = 2 x dp = 2
def test_sp2_groups_equal_one_rank(one_rank, tiny_model_path, tmp_path, nproc):
    out = tmp_path / "sp.pt"
    run_torchrun(os.path.join(DIST, "sequence_parallel_equiv.py"), [tiny_model_path, str(out), "2"], nproc=nproc,
                 timeout=1200)
    a, b = one_rank, torch.load(out, weights_only=True)
    assert a["layout"] == [1, 1] and b["layout"] == [2, nproc // 2]
    assert a["logps"].keys() == b["logps"].keys() == set(range(9))
    for i in a["logps"]:
        assert relative(b["logps"][i], a["logps"][i]) <= 1e-5
        assert relative(b["entropies"][i], a["entropies"][i]) <= 1e-5
    for step_a, step_b in zip(a["history"], b["history"]):
        assert step_b["denominator"] == step_a["denominator"] == 9  # responses, counted once per SP group
        assert step_b["tokens"] == step_a["tokens"] and step_b["sequences"] == step_a["sequences"]
        assert step_b["masked"] == step_a["masked"]
        for key in ("loss", "entropy", "grad_norm"):
            assert step_b[key] == pytest.approx(step_a[key], rel=1e-5), key
    assert a["grads"].keys() == b["grads"].keys()
    assert max(g.abs().max().item() for g in a["grads"].values()) > 1e-3  # a real gradient
    lr, flipped = 1e-3, 0
    for name, grad in a["grads"].items():
        assert relative(b["grads"][name], grad) <= 1e-5, name
        # AdamW's first update is ~lr * sign(g): on components whose gradient is rounding noise (|g| < 1e-3
        # of the tensor's largest, where a sum that cancels keeps only rounding) it turns the noise into
        # +-lr. Everywhere else the weights agree to 1e-5 of the tensor's scale; the noise components
        # differ by at most 2 lr, and there are few of them.
        scale = a["weights"][name].abs().max()
        gap = (b["weights"][name] - a["weights"][name]).abs()
        noise = grad.abs() < 1e-3 * grad.abs().max()
        assert (gap[~noise] <= 1e-5 * scale).all(), name
        assert (gap[noise] <= 2.001 * lr).all(), name
        flipped += int((gap[noise] > 1e-5 * scale).sum())
    assert flipped <= 1e-4 * sum(g.numel() for g in a["grads"].values())


# ------------------------------------------------------------------------------------------------
# Phase 2: `golong train` with sequence parallelism (2 CPU ranks, one SP group, vLLM on every rank)


def golong_train(assets, out_dir, *extra, nproc=2, timeout=1500):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "golong", "train", "recipes/tiny-cpu.yaml", "data.prompts_per_step=4", "rollout.n=4",
           "rollout.max_response_length=6", "trainer.micro_batch_max_tokens=2048", "reward.num_workers=1",
           "logging.plot=false", "logging.progress_bar=false", "trainer.save_every=1", "trainer.export_hf=false",
           f"model.path={assets}/model", f"data.train_files=[{assets}/train.jsonl]", f"trainer.output_dir={out_dir}",
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return proc, [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.multiproc
def test_golong_train_with_sp2_trains_and_resumes(tmp_path):
    assets = tmp_path / "assets"
    subprocess.run([sys.executable, "-m", "golong", "prepare-demo", str(assets), "--rows", "48"], check=True,
                   capture_output=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    _, sp1 = golong_train(assets, tmp_path / "sp1", "trainer.total_steps=1")
    _, first = golong_train(assets, tmp_path / "sp2", "trainer.total_steps=2", "trainer.sequence_parallel_size=2")
    resumed, records = golong_train(assets, tmp_path / "sp2", "trainer.total_steps=3",
                                    "trainer.sequence_parallel_size=2")
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert [r["step"] for r in records] == [1, 2, 3] and records[:2] == first
    # the same seeds sample the same step-1 responses; the SP group's old log-probs match one rank's
    assert first[0]["batch/fingerprint"] == sp1[0]["batch/fingerprint"]
    assert first[0]["rollout/logprob_abs_diff"] == pytest.approx(sp1[0]["rollout/logprob_abs_diff"], rel=1e-4, abs=1e-7)
    for key in ("actor/loss", "actor/grad_norm", "actor/response_tokens", "actor/responses"):
        assert first[0][key] == pytest.approx(sp1[0][key], rel=1e-4, abs=1e-7), key
    assert all(r["rollout/logprob_abs_diff"] < 0.05 for r in records)


@pytest.mark.slow
@pytest.mark.multiproc
def test_streaming_rollouts_with_sp2_train_as_sp1(tmp_path):
    """rollout.mode=streaming with partial rollouts is the rollout side's business: under sequence parallelism
    (both ranks one SP group, still two vLLM engines) the steps stream the very same groups and the update
    computes the same loss as without it."""
    assets = tmp_path / "assets"
    subprocess.run([sys.executable, "-m", "golong", "prepare-demo", str(assets), "--rows", "48"], check=True,
                   capture_output=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    stream = ["trainer.total_steps=2", "rollout.mode=streaming", "rollout.partial=true", "rollout.stream_check_steps=1",
              "rollout.stream_max_groups=3", "rollout.max_response_length=12"]
    _, sp1 = golong_train(assets, tmp_path / "sp1", *stream)
    _, sp2 = golong_train(assets, tmp_path / "sp2", *stream, "trainer.sequence_parallel_size=2")
    assert sum(r["rollout/partial_responses"] for r in sp1) > 0
    for a, b in zip(sp1, sp2):
        assert a["batch/fingerprint"] == b["batch/fingerprint"]
        assert a["rollout/partial_responses"] == b["rollout/partial_responses"]
    for key in ("actor/loss", "actor/grad_norm", "actor/response_tokens"):  # step 1: the same weights and groups
        assert sp2[0][key] == pytest.approx(sp1[0][key], rel=1e-4, abs=1e-7), key
