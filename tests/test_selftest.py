"""`golong selftest`: every check passes on this CPU machine and prints its line; a broken path (weight sync
skipped through the test-only GOLONG_SELFTEST_BREAK) exits 1 naming the check; a crashed or hung worker
fails its group's checks, naming its log."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from golong.configlib import UsageError
from golong.selftest import CHECKS, GROUPS, Result, run_group, selftest

ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def run_selftest(workdir, *args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "golong", "selftest", "--workdir", str(workdir), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **ENV, **(env or {})})


def lines_by_check(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASS", "FAIL", "SKIP"):
            found[parts[1]] = parts[0]
    return found


def test_every_check_belongs_to_one_group():
    assert sorted(CHECKS) == sorted({c for checks in GROUPS.values() for c in checks})
    assert len(CHECKS) == len(set(CHECKS)) == 9


def test_an_unknown_check_is_refused_with_the_valid_names(tmp_path):
    with pytest.raises(UsageError, match="unknown selftest check.*weight_sinc.*valid: prompt_once_attention"):
        selftest(str(tmp_path), only=["weight_sinc"])
    proc = run_selftest(tmp_path, "--only", "weight_sinc", timeout=120)
    assert proc.returncode == 2 and "weight_sync" in proc.stderr


def test_result_line_names_status_check_and_figure():
    assert Result("weight_sync", "FAIL", "greedy unchanged", 2.25).line() == \
        "FAIL  weight_sync            greedy unchanged  (2.2s)"


def test_a_worker_that_fails_or_hangs_fails_its_checks_naming_the_log(tmp_path):
    # no models or rows in the work folder: golong train refuses the recipe (exit 2), reported by the check
    result, streaming = run_group("train_resume", str(tmp_path), timeout=300)
    assert result.status == "FAIL" and "golong train exited 2" in result.figure
    assert "train_resume.train.log" in result.figure
    assert streaming.status == "FAIL" and "streaming.train.log" in streaming.figure
    # a worker stopped by the time box: every check of its group fails, naming the time-out and the log
    results = run_group("engine", str(tmp_path), timeout=0.5)
    assert [r.name for r in results] == list(GROUPS["engine"])
    assert all(r.status == "FAIL" and "no result within 0s" in r.figure and "engine.log" in r.figure for r in results)


@pytest.mark.slow
@pytest.mark.multiproc
def test_selftest_passes_every_check_this_machine_supports(tmp_path):
    proc = run_selftest(tmp_path / "st")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    found = lines_by_check(proc.stdout)
    assert set(found) == set(CHECKS), proc.stdout
    assert found["sleep_wake"] == "SKIP"  # CPU: sleep mode needs CUDA
    assert all(status == "PASS" for name, status in found.items() if name != "sleep_wake"), proc.stdout
    assert "all checks passed" in proc.stdout


@pytest.mark.slow
def test_a_broken_weight_sync_exits_non_zero_naming_it(tmp_path):
    proc = run_selftest(tmp_path / "st", "--only", "weight_sync", env={"GOLONG_SELFTEST_BREAK": "weight_sync"})
    assert proc.returncode == 1, proc.stdout + proc.stderr[-4000:]
    assert lines_by_check(proc.stdout) == {"weight_sync": "FAIL"}, proc.stdout
    assert "the engine does not run the trained weights" in proc.stdout and "1 check(s) FAILED" in proc.stdout
