"""MetricsLogger (metrics.jsonl, resume truncation, progress bar, wandb offline) and PhaseTimer."""
import glob
import json
import os

import numpy as np
import pytest
import torch

from golong.trainer import metrics as metrics_mod
from golong.trainer.config import LoggingConfig
from golong.trainer.metrics import METRICS_FILE, WANDB_ID_FILE, MetricsLogger, PhaseTimer, read_metrics

QUIET = LoggingConfig(progress_bar=False)


def lines(run_dir):
    with open(os.path.join(run_dir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def test_one_flushed_json_line_per_step(tmp_path):
    logger = MetricsLogger(str(tmp_path), QUIET, {}, rank=0)
    logger.log(1, {"reward/mean": 0.25, "reward/T1/mean": np.float32(0.5), "loss": torch.tensor(-1.5)})
    assert lines(tmp_path) == [{"step": 1, "reward/mean": 0.25, "reward/T1/mean": 0.5, "loss": -1.5}]  # before close
    logger.log(2, {"reward/mean": 0.75, "count": np.int64(3)})
    logger.close()
    assert lines(tmp_path)[1] == {"step": 2, "reward/mean": 0.75, "count": 3}


def test_resume_drops_lines_of_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "rew')  # torn last line of a killed run
    logger = MetricsLogger(str(tmp_path), QUIET, {}, rank=0, start_step=3)
    assert [r["step"] for r in lines(tmp_path)] == [1, 2, 3]
    logger.log(4, {"reward/mean": 0.9})
    logger.close()
    assert [(r["step"], r["reward/mean"]) for r in read_metrics(str(path))] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.9)]


def test_fresh_run_starts_a_fresh_file(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "reward/mean": 0.1}\n')
    MetricsLogger(str(tmp_path), QUIET, {}, rank=0).close()
    assert lines(tmp_path) == []


def test_other_ranks_write_nothing(tmp_path):
    logger = MetricsLogger(str(tmp_path), LoggingConfig(wandb=True), {}, rank=1)
    logger.log(1, {"reward/mean": 0.5})
    logger.close()
    assert os.listdir(tmp_path) == []


def test_progress_bar_shows_the_configured_keys(tmp_path, capsys):
    cfg = LoggingConfig(progress_keys=["reward/mean", "time/step"])
    logger = MetricsLogger(str(tmp_path), cfg, {}, rank=0, start_step=2, total_steps=10)
    logger.log(3, {"reward/mean": 0.123456, "time/step": 2.5, "loss": 7.0})
    logger.close()
    err = capsys.readouterr().err
    assert "3/10" in err and "reward/mean=0.1235" in err and "time/step=2.5" in err and "loss" not in err


def test_wandb_offline_records_the_metrics_and_resumes_the_same_run(tmp_path):
    cfg = LoggingConfig(wandb=True, wandb_mode="offline", progress_bar=False)
    logger = MetricsLogger(str(tmp_path), cfg, {"trainer": {"lr": 2e-6}}, rank=0)
    logger.log(1, {"reward/T7/mean": 0.625})
    logger.close()
    run_id = (tmp_path / WANDB_ID_FILE).read_text()
    MetricsLogger(str(tmp_path), cfg, {}, rank=0, start_step=1).close()  # a resumed run
    run_files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # both runs write under the one id (two offline-run folders, or one if they started in the same second)
    assert run_files and all(f.endswith(f"run-{run_id}.wandb") for f in run_files)
    data = b"".join(open(f, "rb").read() for f in run_files)
    assert b"reward/T7/mean" in data and b"0.625" in data


def test_phase_timer_adds_up_phases_and_starts_over(monkeypatch):
    clock = iter([0.0, 2.0, 10.0, 10.5, 20.0, 23.0, 30.0, 31.0])
    monkeypatch.setattr(metrics_mod.time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer()
    with timer.phase("rollout"):  # 0 -> 2
        pass
    with timer.phase("reward"):  # 10 -> 10.5
        pass
    with pytest.raises(RuntimeError), timer.phase("rollout"):  # 20 -> 23, timed even when it raises
        raise RuntimeError("boom")
    assert timer.pop() == {"time/rollout": 5.0, "time/reward": 0.5}
    with timer.phase("update"):  # 30 -> 31
        pass
    assert timer.pop() == {"time/update": 1.0}
