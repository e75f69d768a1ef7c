"""Validation during training (golong/trainer/validate.py): its config checks, its metrics from fixed scores,
save_best's choice and folder, and real 2-rank `golong train` runs that validate at steps 0, 2, 4, resume
without validating a step twice, and keep the best-validated checkpoint through keep_last's rotation."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, free_port
from golong.config import ConfigError, load_config
from golong.data.schema import Example
from golong.trainer.checkpoint import BEST_DIR, LATEST_FILE, RUN_STATE_FILE, Checkpointer
from golong.trainer.metrics import MetricsLogger, read_metrics
from golong.trainer.config import LoggingConfig
from golong.trainer.validate import BestScore, Validator, metric_names, read_best, val_seed_step, validation_metrics
from golong.world import current_world
from test_dry_run_checks import assert_refused, dry_run

BASE = ["model.path=some/model"]


@pytest.fixture
def val_file(tmp_path):
    rows = [{"id": f"v{i}", "task": task, "context": f"context {i}", "question": f"q{i}?", "answer": f"a{i}"}
            for i, task in enumerate(["T1", "T1", "T3"])]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------
# Config: every mistake names its key and the fix


def test_defaults_are_the_papers_validation_sampling_and_off():
    cfg = load_config(None, BASE)
    assert cfg.data.val_files == [] and cfg.trainer.val_every == 0 and cfg.trainer.save_best is False
    assert (cfg.rollout.val_n, cfg.rollout.val_temperature, cfg.rollout.val_top_p) == (4, 0.6, 0.95)
    assert cfg.rollout.val_max_tokens == 0 and cfg.rollout.val_response_length == cfg.rollout.max_response_length
    assert cfg.trainer.save_best_metric == "val/macro"


@pytest.mark.parametrize("overrides, key, fragment", [
    (["trainer.val_every=2"], "trainer.val_every", "data.val_files is empty"),
    (["trainer.val_every=-1"], "trainer.val_every", "must be >= 0"),
    (["data.val_files=[no/such/file.jsonl]"], "data.val_files", "'no/such/file.jsonl' does not exist"),
    (["rollout.val_n=0"], "rollout.val_n", "must be at least 1"),
    (["rollout.val_temperature=-0.1"], "rollout.val_temperature", "must be >= 0"),
    (["rollout.val_temperature=0"], "rollout.val_n", "greedy decoding gives the same response 4 times"),
    (["rollout.val_top_p=0"], "rollout.val_top_p", "must be in (0, 1]"),
    (["rollout.val_top_p=1.5"], "rollout.val_top_p", "must be in (0, 1]"),
    (["rollout.val_max_tokens=-1"], "rollout.val_max_tokens", "must be >= 0"),
    (["trainer.save_best=true"], "trainer.save_best", "trainer.val_every is 0"),
    (["trainer.save_best_metric=val/loss"], "trainer.save_best_metric", "'val/loss' is not a validation metric"),
    (["trainer.save_best_metric=reward/mean"], "trainer.save_best_metric", "is not a validation metric"),
])
def test_mistakes_name_the_key_and_the_fix(overrides, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, BASE + overrides)
    message = str(e.value)
    assert message.startswith(key + ":") and fragment in message and "Fix:" in message, message


def test_val_files_must_be_existing_jsonl_or_parquet_files(tmp_path, val_file):
    (tmp_path / "rows.csv").write_text("a,b\n")
    for bad, fragment in ((str(tmp_path), "is a folder"), (str(tmp_path / "rows.csv"), "neither .jsonl nor .parquet")):
        with pytest.raises(ConfigError, match=rf"^data\.val_files: .*{fragment}.*Fix:"):
            load_config(None, BASE + [f"data.val_files=[{bad}]", "trainer.val_every=2"])
    cfg = load_config(None, BASE + [f"data.val_files=[{val_file}]", "trainer.val_every=2", "trainer.save_best=true",
                                    "trainer.save_best_metric=val/T3/pass@1"])
    assert cfg.data.val_files == [val_file] and cfg.trainer.val_every == 2


def test_val_files_without_val_every_is_a_warning_not_an_error(val_file, caplog):
    with caplog.at_level(logging.WARNING, logger="golong"):
        cfg = load_config(None, BASE + [f"data.val_files=[{val_file}]"])
    assert cfg.trainer.val_every == 0
    assert any("data.val_files is set but trainer.val_every is 0" in r.getMessage() for r in caplog.records)


def test_validation_responses_fit_the_engine_context(val_file):
    on = BASE + [f"data.val_files=[{val_file}]", "trainer.val_every=2", "data.max_prompt_length=100",
                 "rollout.max_response_length=10"]
    assert load_config(None, on).max_model_len == 110
    assert load_config(None, on + ["rollout.val_max_tokens=50"]).max_model_len == 150  # derived: the longer one
    assert load_config(None, BASE + ["data.max_prompt_length=100", "rollout.max_response_length=10",
                                     "rollout.val_max_tokens=50"]).max_model_len == 110  # validation off
    with pytest.raises(ConfigError, match=r"^rollout\.val_max_tokens: validation responses of up to 50 tokens.*Fix:"):
        load_config(None, on + ["rollout.val_max_tokens=50", "rollout.max_model_len=40"])


def test_dry_run_refuses_a_missing_validation_file():
    assert_refused(dry_run("data.val_files=[missing/val.jsonl]", "trainer.val_every=5"),
                   "data.val_files: 'missing/val.jsonl' does not exist", "Fix:")


# ------------------------------------------------------------------------------------------------
# Metrics from hand-computed scores


def example(task: str, i: int) -> Example:
    return Example(id=f"{task}-{i}", task=task, reward_type="em", ground_truth="x", messages=[], source="t",
                   file="f", row=i)


def test_metrics_by_hand():
    examples = [example("T1", 0), example("T1", 1), example("T3", 2)]
    scores = [[1.0, 0.0], [1.0, 1.0], [0.6, 0.2]]  # pass_threshold 0.5
    metrics = validation_metrics(examples, scores, pass_threshold=0.5)
    assert set(metrics) == set(metric_names(["T1", "T3"]))
    assert metrics["val/T1/mean_score"] == pytest.approx(3 / 4)
    assert metrics["val/T1/pass@1"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert metrics["val/T3/mean_score"] == pytest.approx(0.4)
    assert metrics["val/T3/pass@1"] == pytest.approx(1 / 2)
    assert metrics["val/mean_score"] == pytest.approx((1 + 0 + 1 + 1 + 0.6 + 0.2) / 6)
    assert metrics["val/pass@1"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["val/macro"] == pytest.approx((3 / 4 + 0.4) / 2)  # each task weighs the same, not each row


def test_validation_seeds_never_meet_a_training_steps():
    from golong.rollout.engine import request_seeds

    assert [val_seed_step(s) for s in (0, 2, 4)] == [-1, -3, -5]
    training = {seed for step in range(50) for seed in request_seeds(0, step, range(16))}
    validation = {seed for step in range(50) for seed in request_seeds(0, val_seed_step(step), range(16))}
    assert not training & validation
    assert request_seeds(0, val_seed_step(4), range(8)) == request_seeds(0, val_seed_step(4), range(8))


# ------------------------------------------------------------------------------------------------
# save_best: which step, and a folder that rotation leaves alone


def test_best_score_keeps_the_first_of_the_best():
    best = BestScore("val/macro")
    saved = [best.update(step, {"val/macro": score}) for step, score in [(0, 0.2), (2, 0.5), (4, 0.5), (6, 0.4),
                                                                          (8, 0.7)]]
    assert saved == [True, True, False, False, True] and (best.step, best.score) == (8, 0.7)
    best = BestScore("val/T1/pass@1", score=0.9, step=10)  # read back on resume
    assert not best.update(12, {"val/T1/pass@1": 0.9, "val/macro": 1.0}) and best.step == 10
    assert not best.update(14, {"val/macro": 1.0})  # the metric absent: nothing to compare, nothing saved


def fake_checkpoint(root, name, step, extra=None):
    folder = root / "checkpoints" / name
    folder.mkdir(parents=True)
    (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    (folder / RUN_STATE_FILE).write_text(json.dumps({"step": step, "sampler": {}, "extra": extra or {},
                                                     "world_size": 1}))
    return folder


def test_best_folder_is_never_rotated_resumed_from_or_named_latest(tmp_path):
    fake_checkpoint(tmp_path, BEST_DIR, 2, {"best": {"metric": "val/macro", "score": 0.5, "step": 2}})
    for step in (4, 6, 8):
        fake_checkpoint(tmp_path, Checkpointer.dir_name(step), step)
    ckpts = tmp_path / "checkpoints"
    (ckpts / ".tmp-old-best").mkdir()  # left by a save killed between its two renames
    checkpointer = Checkpointer(str(tmp_path), keep_last=1)
    assert checkpointer.latest() == str(ckpts / "step_000008")
    checkpointer._delete_old()
    assert sorted(os.listdir(ckpts)) == [BEST_DIR, LATEST_FILE, "step_000008"]
    assert (ckpts / LATEST_FILE).read_text() == "step_000008"
    world = current_world()
    assert read_best(checkpointer, "val/macro", world) == BestScore("val/macro", score=0.5, step=2)
    assert read_best(checkpointer, "val/pass@1", world) == BestScore("val/pass@1")  # kept for another metric
    assert read_best(Checkpointer(str(tmp_path / "other"), keep_last=1), "val/macro", world) == BestScore("val/macro")


def test_a_fresh_run_starts_a_fresh_metrics_file_and_a_resumed_one_keeps_step_0(tmp_path):
    cfg = LoggingConfig(progress_bar=False)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val/macro": 0.1}) + "\n" for s in (0, 1, 2)))
    resumed = MetricsLogger(str(tmp_path), cfg, {}, rank=0, start_step=1)
    resumed.close()
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [0, 1]
    fresh = MetricsLogger(str(tmp_path), cfg, {}, rank=0, start_step=0)  # a restart before any checkpoint
    fresh.log(0, {"val/macro": 0.2})
    fresh.close()
    assert read_metrics(str(tmp_path / "metrics.jsonl")) == [{"step": 0, "val/macro": 0.2}]


# ------------------------------------------------------------------------------------------------
# Validation prompts: read as training prompts are


def test_validation_rows_are_templated_and_filtered_as_training_rows(tiny_model_path, val_file, tmp_path):
    from golong.model_check import load_tokenizer
    from golong.data.prompt_set import read_prompt_set

    long_row = {"id": "long", "task": "T6", "context": "word " * 400, "question": "q?", "answer": ["a"]}
    with open(val_file, "a") as f:
        f.write(json.dumps(long_row) + "\n")
    tokenizer = load_tokenizer(tiny_model_path)
    common = [f"model.path={tiny_model_path}", "data.max_prompt_length=200", "data.prompts_per_step=2",
              "data.max_rows=2", "data.enable_thinking=false"]
    cfg = load_config(None, common + [f"data.val_files=[{val_file}]", "trainer.val_every=3", "trainer.save_best=true",
                                      "trainer.save_best_metric=val/T3/pass@1"])
    world = current_world()
    validator = Validator.load(cfg, tokenizer, world)
    # every row but the overlong one, not the data.max_rows subset (that is the training data's)
    assert [e.id for e in validator.data.examples] == ["v0", "v1", "v2"] and validator.data.num_dropped_long == 1
    assert validator.data.tasks == ["T1", "T3"] and validator.every == 3
    as_training = read_prompt_set([val_file], load_config(None, common + ["data.max_rows=0"]).data, tokenizer, world)
    assert [validator.data.prompts[i] for i in range(3)] == [as_training.prompts[i] for i in range(3)]
    # a metric of a task the validation rows do not have is refused before any engine starts
    cfg = load_config(None, common + [f"data.val_files=[{val_file}]", "trainer.val_every=3", "trainer.save_best=true",
                                      "trainer.save_best_metric=val/T6/mean_score"])
    with pytest.raises(ConfigError, match=r"^trainer\.save_best_metric: val/T6/mean_score is not logged.*T1, T3.*Fix:"):
        Validator.load(cfg, tokenizer, world)
    assert Validator.load(load_config(None, common), tokenizer, world).every == 0  # off: nothing read


# ------------------------------------------------------------------------------------------------
# Real runs: 2 ranks, DeepSpeed ZeRO-3 and vLLM on CPU

ENV = {"OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO}
RUN = ["data.prompts_per_step=4", "rollout.n=4", "rollout.max_response_length=6",
       "trainer.micro_batch_max_tokens=2048", "reward.num_workers=1", "trainer.export_hf=false",
       "trainer.val_every=2", "rollout.val_n=2", "rollout.val_max_tokens=8", "trainer.save_every=2",
       "trainer.keep_last=1", "trainer.save_best=true"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("val_assets")
    subprocess.run([sys.executable, "-m", "golong", "prepare-demo", str(out), "--rows", "48", "--eval-docs", "2"],
                   check=True, capture_output=True, env={**os.environ, **ENV}, cwd=REPO, timeout=300)
    return out  # eval.jsonl: 8 held-out rows, 2 of each of the demo's 4 tasks


def train(assets, out_dir, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "golong", "train", "recipes/tiny-cpu.yaml", *RUN, f"model.path={assets}/model",
           f"data.train_files=[{assets}/train.jsonl]", f"data.val_files=[{assets}/eval.jsonl]",
           f"trainer.output_dir={out_dir}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return proc


def val_lines(out_dir) -> dict[int, dict]:
    """step -> that step's val/ metrics, for the lines that have any."""
    lines = read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("val/")} for r in lines
            if any(k.startswith("val/") for k in r)}


def best_state(out_dir) -> dict:
    return json.loads((out_dir / "checkpoints" / BEST_DIR / RUN_STATE_FILE).read_text())


@pytest.mark.slow
@pytest.mark.multiproc
def test_validation_every_two_steps_resumes_identically_and_keeps_the_best(assets, tmp_path):
    from test_train_e2e import checkpoint_tensors, same_state

    full = tmp_path / "full"
    proc = train(assets, full, "trainer.total_steps=4", "logging.plot=true")
    records = read_metrics(str(full / "metrics.jsonl"))
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    val = val_lines(full)
    assert sorted(val) == [0, 2, 4]  # before the first step and after steps 2 and 4; not 1 and 3
    assert set(records[0]) == {"step", "time/validate", *val[0]}  # step 0: the validation alone
    for step, metrics in val.items():
        assert set(metrics) == set(metric_names(["T1", "T2", "T3", "T6"])), (step, sorted(metrics))
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["val/macro"] == pytest.approx(sum(metrics[f"val/{t}/mean_score"] for t in ("T1", "T2", "T3", "T6")) / 4)
        assert "reward/mean" in records[step] or step == 0  # in the step's own line
    console = [line for line in proc.stderr.splitlines() if "validation at step" in line]
    assert len(console) == 3 and all("val/macro" in line and "T1 " in line for line in console), console

    # save_best: the first of the best-scoring validations, kept whole though keep_last=1 deleted step 2
    scores = {step: val[step]["val/macro"] for step in (0, 2, 4)}
    best_step = min(s for s in scores if scores[s] == max(scores.values()))
    state = best_state(full)
    assert state["step"] == best_step and state["extra"]["best"] == {"metric": "val/macro", "score": scores[best_step],
                                                                   "step": best_step}
    ckpts = full / "checkpoints"
    assert sorted(n for n in os.listdir(ckpts) if not n.endswith(".py")) == [BEST_DIR, LATEST_FILE, "step_000004"]
    assert (ckpts / LATEST_FILE).read_text().strip() == "step_000004"
    best_files = set(os.listdir(ckpts / BEST_DIR))
    for rank in (0, 1):
        assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in best_files and f"rng_rank_0000{rank}.json" in best_files
    best_tensors = checkpoint_tensors(ckpts / BEST_DIR)
    if best_step == 4:  # the same state as the step's own checkpoint
        assert same_state(best_tensors, checkpoint_tensors(ckpts / "step_000004"))
    from matplotlib.image import imread

    assert imread(full / "reward_per_task.png").shape[0] == 1045  # a second panel: the validation curves

    # stopped after step 2, resumed to step 4: step 2 is not validated again, step 4 as in the uninterrupted run
    split = tmp_path / "split"
    train(assets, split, "trainer.total_steps=2", "logging.plot=false")
    assert sorted(val_lines(split)) == [0, 2]
    if best_step == 2:  # the state of step 2, which the first run's rotation deleted: the stopped run has it
        assert same_state(best_tensors, checkpoint_tensors(split / "checkpoints" / "step_000002"))
    resumed = train(assets, split, "trainer.total_steps=4", "logging.plot=false")
    assert "resuming from" in resumed.stderr
    records = read_metrics(str(split / "metrics.jsonl"))
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert sorted(val_lines(split)) == [0, 2, 4]
    assert len([line for line in resumed.stderr.splitlines() if "validation at step" in line]) == 1
    # Exact: the resumed policy is the checkpoint's fp32 weights (loaded bit for bit), synced into the
    # engine as the uninterrupted run's were, and every validation request carries its own seed.
    assert val_lines(split) == val_lines(full)
    assert best_state(split) == state  # the best score read back from best/ on resume
    assert same_state(checkpoint_tensors(split / "checkpoints" / BEST_DIR), best_tensors)

    # `golong export RUN_DIR --best` writes the best checkpoint's weights (another step's than the latest's)
    from safetensors.torch import load_file

    from golong.trainer.export import export_checkpoint

    best_hf = load_file(os.path.join(export_checkpoint(str(full), best=True), "model.safetensors"))
    assert (full / "hf-best" / "config.json").exists()
    latest_hf = load_file(os.path.join(export_checkpoint(str(full), str(tmp_path / "hf-latest")), "model.safetensors"))
    assert best_hf.keys() == latest_hf.keys()
    assert (best_step == 4) == all(torch.equal(best_hf[k], latest_hf[k]) for k in best_hf)
