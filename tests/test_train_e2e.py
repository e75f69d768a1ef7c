"""End-to-end training: `golong train` under torchrun with the real DeepSpeed and vLLM on the tiny model.

One uninterrupted 2-rank run is shared by several tests; a second run of the same recipe is killed with
SIGKILL after its second checkpoint and resumed, and must match the first step for step.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import REPO, free_port

STEPS = 4
OVERRIDES = [
    f"trainer.total_steps={STEPS}", "trainer.save_every=1", "trainer.keep_last=2",
    "data.prompts_per_step=4", "rollout.n=4", "rollout.max_response_length=6",
    "trainer.micro_batch_max_tokens=2048", "reward.num_workers=1", "logging.plot=true",
    # AdamW's decoupled weight decay moves the weights even in a step whose rewards all agree (a random
    # tiny model often earns nothing in 4 steps), so "the trained weights differ" cannot pass by luck.
    "trainer.weight_decay=0.1",
]
ENV = {"OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
       "PYTHONPATH": REPO}


@pytest.fixture(scope="module")
def demo_assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    subprocess.run([sys.executable, "-m", "golong", "prepare-demo", str(out), "--rows", "48"],
                   check=True, capture_output=True, env={**os.environ, **ENV}, cwd=REPO, timeout=300)
    return out


def train_command(assets, out_dir, *extra, nproc=2):
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}"] if nproc > 1 else [sys.executable]
    return [*launcher, "-m", "golong", "train", "recipes/tiny-cpu.yaml", *OVERRIDES,
            f"model.path={assets}/model", f"data.train_files=[{assets}/train.jsonl]",
            f"trainer.output_dir={out_dir}", *extra]


def run_training(assets, out_dir, *extra, nproc=2, timeout=900):
    proc = subprocess.run(train_command(assets, out_dir, *extra, nproc=nproc), capture_output=True, text=True,
                          env={**os.environ, **ENV}, cwd=REPO, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


def metrics_of(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full_run(demo_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    run_training(demo_assets, out)
    return out


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_rank_run_writes_everything(full_run):
    records = metrics_of(full_run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:  # per task: the tasks of the step's prompts
        tasks = {k.split("/")[1] for k in r if k.startswith("reward/T") and k.endswith("/mean")}
        assert tasks and all(f"reward/{t}/pass_rate" in r and f"advantage/abs_mean/{t}" in r for t in tasks)
    for key in ("reward/mean", "reward/pass_rate", "advantage/abs_mean_cv",
                "advantage/w_max", "actor/loss", "actor/clip_frac_high", "actor/entropy", "actor/grad_norm",
                "rollout/logprob_abs_diff", "actor/icepop_masked_frac", "reward/timeouts",
                "response_length/mean", "rollout/num_filtered_prompts", "rollout/tokens_per_s", "time/rollout", "time/reward", "time/old_logprobs", "time/update",
                "time/sync"):
        assert all(key in r for r in records), key
    for r in records:
        assert r["batch/responses"] == 4 * 4  # prompts_per_step x n, over both ranks
        assert (r["sampling/rounds"], r["sampling/prompts_drawn"], r["sampling/groups_kept"]) == (1, 4, 4)
        # vLLM (bf16) and the trainer (fp32) see the same weights after every sync.
        assert r["rollout/logprob_abs_diff"] < 0.05
    assert records[-1]["actor/lr"] > 0
    saved = yaml.safe_load((full_run / "config.yaml").read_text())
    assert saved["trainer"]["total_steps"] == STEPS and saved["algorithm"]["advantage"]["name"] == "tmn_reweight"
    assert (full_run / "reward_per_task.png").stat().st_size > 1000
    files = set(os.listdir(full_run / "checkpoints" / f"step_{STEPS:06d}"))
    assert {"run_state.json", "rng_rank_00000.json", "rng_rank_00001.json"} <= files
    for rank in (0, 1):  # each rank's ZeRO-3 shard of the weights and of the optimizer state
        assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in files
        assert any(f.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for f in files), files
    state = json.loads((full_run / "checkpoints" / f"step_{STEPS:06d}" / "run_state.json").read_text())
    assert state["step"] == STEPS and state["world_size"] == 2 and state["sampler"]["cursor"] == 4 * STEPS
    logs = full_run / "logs"  # third-party output of each rank, kept in full
    assert {"rank0.log", "rank1.log"} <= set(os.listdir(logs)) and "Attempted to load weight" in (logs / "rank0.log").read_text()
    assert {"step_000003", "step_000004"} <= set(os.listdir(full_run / "checkpoints"))
    assert "step_000002" not in os.listdir(full_run / "checkpoints")  # keep_last=2


@pytest.mark.slow
@pytest.mark.multiproc
def test_weights_change_and_hf_export_matches_the_checkpoint(full_run, demo_assets, tmp_path):
    from safetensors.torch import load_file

    from golong.trainer.export import export_checkpoint

    exported = load_file(str(full_run / "hf" / "model.safetensors"))
    initial = load_file(str(demo_assets / "model" / "model.safetensors"))
    assert any(not torch.equal(exported[k].float(), initial[k].float()) for k in initial)
    # `golong export` consolidates the ZeRO-3 shards of the latest checkpoint: the same weights.
    again = load_file(os.path.join(export_checkpoint(str(full_run), str(tmp_path / "hf")), "model.safetensors"))
    for name, tensor in exported.items():
        torch.testing.assert_close(again[name].float(), tensor.float(), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.multiproc
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(full_run, demo_assets, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(train_command(demo_assets, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **ENV}, cwd=REPO, start_new_session=True)
    marker = out / "checkpoints" / "step_000002" / "run_state.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the run never completed its second checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, wherever it is
    proc.wait()

    resumed = run_training(demo_assets, out)
    assert "resuming from" in resumed.stdout + resumed.stderr
    records = metrics_of(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # none lost, none repeated
    reference = metrics_of(full_run)
    assert [r["batch/fingerprint"] for r in records] == [r["batch/fingerprint"] for r in reference]
    assert (out / "hf" / "model.safetensors").exists()


@pytest.mark.slow
def test_user_estimator_two_ppo_epochs_and_overlong_mask_in_one_process(demo_assets, tmp_path):
    out = tmp_path / "custom"
    proc = run_training(demo_assets, out, "trainer.total_steps=1", "trainer.export_hf=false", "logging.plot=false",
                        "algorithm.advantage.name=tests.custom_estimator:MyEstimator",
                        "algorithm.advantage.params={clip: 1.0}", "algorithm.ppo_epochs=2", "rollout.overlong_mask=true",
                        "trainer.lr=0.003", "trainer.warmup_steps=2", nproc=1)
    (record,) = metrics_of(out)
    assert "advantage/clipped_fraction" in record and 0.0 <= record["advantage/clipped_fraction"] <= 1.0
    # Two optimizer updates in the step: the LR schedule (k / warmup_steps) is at its second update's 2/2.
    assert record["actor/lr"] == pytest.approx(0.003)
    assert math.isfinite(record["actor/grad_norm"]) and record["actor/grad_norm"] >= 0.0
    # overlong_mask: only responses that ended with EOS are in the loss, counted once per PPO epoch.
    with_eos = round(record["batch/responses"] * (1 - record["response_length/truncated_ratio"]))
    assert record["actor/responses"] == 2 * with_eos
    # start-up says what it is doing and how long each part took
    for part in ("loading data", "DeepSpeed ZeRO-3", "vLLM engine", "reward pool"):
        assert f"[golong] {part}" in proc.stderr and "done in" in proc.stderr, part


def test_a_bad_row_stops_the_run_before_any_engine_starts(tiny_model_path, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = {"id": "a", "task": "T1", "context": "c", "question": "q", "answer": "x"}
    data.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "task": "T42"}) + "\n")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "golong", "train", "recipes/tiny-cpu.yaml",
                           f"model.path={tiny_model_path}", f"data.train_files=[{data}]",
                           f"trainer.output_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, env={**os.environ, **ENV}, cwd=REPO, timeout=300)
    assert proc.returncode != 0
    assert "bad.jsonl" in proc.stderr and "row 2" in proc.stderr and "task" in proc.stderr
    assert time.time() - start < 120


@pytest.mark.slow
@pytest.mark.multiproc
def test_router_replay_on_two_ranks_trains_each_rank_on_the_routes_of_its_own_samples(demo_assets, tmp_path):
    """MoE router replay through the whole loop: the routes stay on the rank that generated them and
    each rank fetches those of the samples it trains (RolloutCollector.fetch_routes). A route given to the
    wrong response fails pack_unit_routes' shape check or shows as chance-level agreement (~2 of 8 experts)."""
    from golong.tiny_model import build_tiny_moe_model

    moe = build_tiny_moe_model(str(tmp_path / "moe"))
    out = tmp_path / "r3"
    run_training(demo_assets, out, "trainer.total_steps=2", "trainer.save_every=0", "trainer.export_hf=false",
                 "logging.plot=false", f"model.path={moe}", "model.zero3_leaf_modules=[Qwen3MoeSparseMoeBlock]",
                 "rollout.router_replay=true", "rollout.max_response_length=8")
    records = metrics_of(out)
    assert len(records) == 2
    for r in records:
        assert r["batch/trained_responses"] > 0
        # the trainer's router picks the replayed experts for ~99% of (token, layer) choices (bf16 engine)
        assert r["rollout/router_agreement"] > 0.95, r["rollout/router_agreement"]
        assert math.isfinite(r["actor/grad_norm"])


@pytest.mark.slow
@pytest.mark.multiproc
def test_streaming_router_replay_records_each_request_across_engine_steps(demo_assets, tmp_path):
    """rollout.mode=streaming (partial=false) with MoE router replay: each response's routes are gathered from
    the engine steps that computed it, kept on its rank until the trainer fetches them; a route joined to the
    wrong response shows as chance-level agreement or fails the shape check."""
    from golong.tiny_model import build_tiny_moe_model

    moe = build_tiny_moe_model(str(tmp_path / "moe"))
    out = tmp_path / "r3-stream"
    run_training(demo_assets, out, "trainer.total_steps=2", "trainer.save_every=0", "trainer.export_hf=false",
                 "logging.plot=false", f"model.path={moe}", "model.zero3_leaf_modules=[Qwen3MoeSparseMoeBlock]",
                 "rollout.router_replay=true", "rollout.max_response_length=8", "rollout.mode=streaming",
                 "rollout.stream_check_steps=1", "rollout.stream_max_groups=3")
    records = metrics_of(out)
    assert len(records) == 2
    for r in records:
        assert r["batch/trained_prompts"] == 4
        assert r["rollout/router_agreement"] > 0.95, r["rollout/router_agreement"]
        assert math.isfinite(r["actor/grad_norm"])


def checkpoint_tensors(step_dir) -> dict[str, torch.Tensor]:
    """Every tensor of a ZeRO checkpoint's optimizer shards (each rank's fp32 weight partition and its
    Adam moments), keyed by file and position: equal dicts mean equal weights and optimizer state."""
    tensors = {}

    def walk(prefix, value):
        if torch.is_tensor(value):
            tensors[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    for name in sorted(os.listdir(step_dir)):
        if name.endswith("optim_states.pt"):
            with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):  # the classes DeepSpeed pickles there
                walk(name, torch.load(os.path.join(step_dir, name), weights_only=True)["optimizer_state_dict"])
    assert any("exp_avg_sq" in k for k in tensors) and any("fp32" in k for k in tensors), sorted(tensors)[:20]
    return tensors


def same_state(a: dict, b: dict) -> bool:
    # the same state saved twice (not two code paths): equal bit for bit
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_nan_loss_on_one_rank_skips_the_step_everywhere_and_three_in_a_row_stop_the_run(demo_assets, tmp_path):
    """The non-finite guard in a real 2-rank run: GOLONG_TEST_NAN_STEPS poisons the loss of rank 1's first
    micro-batch in steps 2, 4, 5 and 6. Step 2 is skipped on both ranks (weights and Adam moments equal
    step 1's, the LR schedule does not advance), step 3 trains again, and the third skip in a row (step 6)
    stops the run with an error, before its checkpoint."""
    out = tmp_path / "nan"
    proc = subprocess.run(train_command(demo_assets, out, "trainer.total_steps=8", "trainer.keep_last=8",
                                        "trainer.warmup_steps=4", "trainer.export_hf=false", "logging.plot=false"),
                          capture_output=True, text=True, env={**os.environ, **ENV, "GOLONG_TEST_NAN_STEPS": "2,4,5,6"},
                          cwd=REPO, timeout=900)
    assert proc.returncode != 0, proc.stderr[-4000:]
    assert "golong: error: trainer.max_skipped_steps: 3 steps in a row (up to step 6)" in proc.stderr, proc.stderr[-4000:]
    assert "step 2: a loss or the global gradient norm" in proc.stderr
    records = metrics_of(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["actor/skipped_steps"] for r in records] == [0, 1, 0, 1, 1, 1]
    assert all(math.isfinite(r["actor/grad_norm"]) for r in records if not r["actor/skipped_steps"])
    lr = [r["actor/lr"] for r in records]
    assert lr[0] < lr[1] == lr[2] < lr[3]  # warm-up: a skipped update does not advance the schedule
    ckpts = out / "checkpoints"
    assert sorted(d for d in os.listdir(ckpts) if d.startswith("step_")) == [f"step_{i:06d}" for i in range(1, 6)]
    assert (ckpts / "latest").read_text().strip() == "step_000005"
    state = {i: checkpoint_tensors(ckpts / f"step_{i:06d}") for i in range(1, 6)}
    assert same_state(state[2], state[1])  # skipped: weights and Adam moments untouched, on both ranks' shards
    assert not same_state(state[3], state[2])  # training went on
    assert same_state(state[4], state[3]) and same_state(state[5], state[3])


# Streaming rollouts: check after every engine step, 4 groups generating per engine (8 for a 4-group step), so
# every step stops with responses in flight; dynamic sampling drops the groups whose rewards agree.
STREAMING = ["rollout.mode=streaming", "rollout.stream_check_steps=1", "rollout.stream_max_groups=4",
             "algorithm.dynamic_sampling.enabled=true", "rollout.max_response_length=12"]


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("partial", ["false", "true"])
def test_streaming_sigkill_then_resume_loses_no_prompt_and_repeats_none(demo_assets, tmp_path, partial):
    """partial=false hands aborted prompts back to the sampler; partial=true carries each rank's unfinished
    responses: both are in the checkpoint, so a run killed after step 2 and resumed trains the very groups,
    responses and rewards of an uninterrupted run."""
    extra = [*STREAMING, f"rollout.partial={partial}"]
    full = tmp_path / "full"
    run_training(demo_assets, full, *extra)
    reference = metrics_of(full)
    if partial == "true":
        assert sum(r["rollout/partial_responses"] for r in reference) > 0  # responses did span two policies
        assert max(r["rollout/policy_lag_max"] for r in reference) >= 1
    else:
        assert sum(r["rollout/aborted"] for r in reference) > 0 and all(r["rollout/policy_lag_max"] == 0 for r in reference)
    assert all(r["batch/trained_prompts"] == 4 for r in reference)

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_command(demo_assets, out, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **ENV}, cwd=REPO, start_new_session=True)
    marker = out / "checkpoints" / "step_000002" / "run_state.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never completed its second checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(marker.read_text())
    assert saved["extra"]["stream"]["next_draw"] > 0
    for rank in (0, 1):  # each rank's own carried responses (partial=true), in its own file
        local = json.loads((marker.parent / f"local_rank_{rank:05d}.json").read_text())
        assert (len(local["carried"]) > 0) == (partial == "true")

    resumed = run_training(demo_assets, out, *extra)
    assert "resuming from" in resumed.stdout + resumed.stderr
    records = metrics_of(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("batch/fingerprint", "response_length/trained_mean", "reward/mean", "sampling/prompts_drawn",
                "rollout/partial_responses", "rollout/aborted"):
        assert [r[key] for r in records] == [r[key] for r in reference], key
    last = f"step_{STEPS:06d}"
    assert (json.loads((out / "checkpoints" / last / "run_state.json").read_text())["sampler"]
            == json.loads((full / "checkpoints" / last / "run_state.json").read_text())["sampler"])
