"""Checks that need no data and no engine run in config validation, so `golong train RECIPE --dry-run`
reports them (exit code 2, one line on stderr naming the key and the fix); and data.max_rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from golong.advantage import AdvantageEstimator, GroupedRewards
from golong.config import ConfigError, load_config
from golong.data.config import DataConfig
from golong.data.loader import load_examples, subset_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "recipes/tiny-cpu.yaml"


def dry_run(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    if env is None or "WORLD_SIZE" not in env:
        environment.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "golong", "train", TINY, *overrides, "--dry-run"],
                          capture_output=True, text=True, timeout=180, cwd=REPO, env=environment)


def assert_refused(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert out.stdout == "" and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert line.startswith("golong: error: ") and "\n" not in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# One subprocess per case costs ~5 s (torch import); every case of the issue is one parametrized run.
@pytest.mark.parametrize("overrides, fragments", [
    (["algorithm.advantage.name=grpoo"],
     ["algorithm.advantage.name: unknown advantage estimator 'grpoo'", "Did you mean 'grpo'?",
      "Valid names: dr_grpo, grpo, task_std, tmn_reweight", "package.module:ClassName"]),
    (["algorithm.advantage.name=no_such_pkg.estimators:Mine"],
     ["algorithm.advantage.name:", "cannot import module 'no_such_pkg.estimators'", "No module named 'no_such_pkg'",
      "PYTHONPATH"]),
    (["algorithm.advantage.params.alpah=0.5"],
     ["algorithm.advantage.params:", "unexpected keyword argument 'alpah'", "It accepts: alpha, reweight, delta",
      "'alpah' -> 'alpha'", "(from command line)"]),
    (["algorithm.advantage.params={alpha: 3}"],
     ["algorithm.advantage.params: tmn_reweight refused", "alpha must be in [0, 1]", "Fix:"]),
    (["algorithm.advantage.params.delta=0"],
     ["algorithm.advantage.params:", "delta must be a positive number", "Fix:"]),
    (["algorithm.advantage.name=grpo", "algorithm.advantage.params={delta: -1}"],
     ["algorithm.advantage.params: grpo refused", "delta must be a positive number"]),
    (["algorithm.advantage.params.reweight=maybe"],
     ["algorithm.advantage.params:", "reweight must be true or false"]),
    (["rollout.n=1"],
     ["rollout.n: is 1, but tmn_reweight compares each response with the other responses to its prompt",
      "Fix: set rollout.n to the group size, 2 or more"]),
    (["algorithm.advantage.name=grpo", "algorithm.advantage.params={}", "rollout.n=1"], ["rollout.n: is 1, but grpo"]),
    (["data.max_rows=8"], ["data.max_rows: 8 rows cannot fill one step of prompts_per_step=16"]),
    (["algorithm.advantage.params={alpha:"], ["not valid YAML", "quote the whole override"]),
])
def test_dry_run_reports_the_mistake(overrides, fragments):
    assert_refused(dry_run(*overrides), *fragments)


def test_dry_run_checks_tensor_parallel_size_against_the_world_when_known(tiny_model_path):
    model = f"model.path={tiny_model_path}"
    assert_refused(dry_run("rollout.tensor_parallel_size=4", env={"WORLD_SIZE": "6"}),
                   "rollout.tensor_parallel_size: 4 does not divide the 6 ranks", "e.g. 3")
    assert dry_run(model, "rollout.tensor_parallel_size=4", env={"WORLD_SIZE": "8"}).returncode == 0
    assert dry_run(model, "rollout.tensor_parallel_size=4").returncode == 0  # no WORLD_SIZE: unknown, not checked


def test_a_valid_user_estimator_path_passes_the_dry_run(tiny_model_path):
    out = dry_run(f"model.path={tiny_model_path}", "algorithm.advantage.name=tests.custom_estimator:MyEstimator", "algorithm.advantage.params={clip: 2}")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["algorithm"]["advantage"]["params"] == {"clip": 2}


class NoGroupBaseline(AdvantageEstimator):
    """A fixed-baseline estimator (A = r - 0.5): meaningful with one response per prompt."""

    needs_groups = False

    def compute(self, batch: GroupedRewards):
        return batch.rewards - 0.5


def test_an_estimator_that_needs_no_groups_may_run_with_one_response():
    name = f"{__name__}:NoGroupBaseline"
    assert load_config(None, ["model.path=m", f"algorithm.advantage.name={name}", "rollout.n=1"]).rollout.n == 1
    with pytest.raises(ConfigError, match=r"^rollout\.n: is 1"):
        load_config(None, ["model.path=m", "algorithm.advantage.name=tests.custom_estimator:MyEstimator", "rollout.n=1"])


def test_sequence_parallel_hook_is_a_noop_without_a_world():
    cfg = load_config(None, ["model.path=m", "rollout.tensor_parallel_size=2"])
    cfg.validate_parallel_sizes(None)
    cfg.validate_parallel_sizes(4)
    with pytest.raises(ConfigError, match=r"rollout\.tensor_parallel_size: 2 does not divide the 3 ranks"):
        cfg.validate_parallel_sizes(3)


# ------------------------------------------------------------------------------------------------
# data.max_rows: a fixed random subset, taken before tokenization


def write_rows(path, n: int) -> str:
    rows = [{"id": f"r{i}", "task": "T1", "context": f"context {i}", "question": f"q{i}?",
             "answer": f"a{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_subset_is_reproducible_uniform_and_in_file_order():
    first = subset_rows(23_000, 8_000, seed=0)
    assert first == subset_rows(23_000, 8_000, seed=0)  # the same rows in every run and process
    assert len(first) == len(set(first)) == 8_000 and first == sorted(first)
    assert 0 <= first[0] and first[-1] < 23_000
    assert first != subset_rows(23_000, 8_000, seed=1)
    # uniform: each decile of the file holds about a tenth of the subset (binomial sd ~ 27)
    per_decile = [sum(1 for i in first if d * 2300 <= i < (d + 1) * 2300) for d in range(10)]
    assert all(abs(c - 800) < 150 for c in per_decile), per_decile


def test_loader_keeps_only_the_subset(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", 50)
    everything = load_examples([path], DataConfig())
    assert len(everything.examples) == 50 and everything.num_rows_before_subset == 0
    subset = load_examples([path], DataConfig(max_rows=12, subset_seed=3))
    assert subset.num_rows_before_subset == 50
    assert [e.id for e in subset.examples] == [f"r{i}" for i in subset_rows(50, 12, 3)]
    assert [e.id for e in load_examples([path], DataConfig(max_rows=12, subset_seed=3)).examples] == \
        [e.id for e in subset.examples]
    assert len(load_examples([path], DataConfig(max_rows=500)).examples) == 50  # fewer rows than asked: all


@pytest.mark.parametrize("recipe, max_rows", [("qwen3-4b-grpo", 8000), ("qwen3-4b-tmn-reweight", 8000),
                                              ("qwen3-30b-a3b-grpo", 0), ("qwen3-30b-a3b-tmn-reweight", 0)])
def test_qwen3_recipes_follow_the_paper_and_scripts(recipe, max_rows):
    cfg = load_config(f"{REPO}/recipes/{recipe}.yaml")
    assert cfg.data.max_rows == max_rows  # section 3.5: the 4B runs used an 8,000-row subset, 30B the full data
    assert cfg.trainer.weight_decay == 0.1 and not cfg.trainer.weight_decay_norms_and_biases
    assert cfg.rollout.n == 16 and cfg.data.prompts_per_step == 128
    if "tmn" in recipe:
        assert cfg.algorithm.advantage.name == "tmn_reweight"
        assert cfg.algorithm.advantage.params == {"alpha": 0.8, "reweight": True}
