"""Advantage API: registry and build, subclasses outside the package (import path, YAML), input and
output checks, and the README example."""
from __future__ import annotations

import contextlib
import io
import math
import os
import re

import pytest
import torch

import golong.advantage as adv
from golong.advantage import AdvantageEstimator, GroupedRewards, build, register
from golong.advantage.registry import _ESTIMATORS
from golong.config import ConfigError, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 1e-6

# ------------------------------------------------------------------------------------------------
# Registry


def test_builtin_names_build_their_classes():
    assert {"dr_grpo", "grpo", "task_std", "tmn_reweight"} <= set(adv.registered_names())
    assert isinstance(build("grpo"), adv.GRPO)
    assert isinstance(build("dr_grpo"), adv.DrGRPO)
    assert isinstance(build("task_std"), adv.TaskStd)
    tmn = build("tmn_reweight")
    assert isinstance(tmn, adv.TMNReweight) and (tmn.alpha, tmn.reweight, tmn.delta) == (0.8, True, 1e-6)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown advantage estimator 'grpoo'\. Did you mean 'grpo'\? "
                                          r"Valid names: .*, or package\.module:ClassName") as error:
        build("grpoo")
    assert all(name in str(error.value) for name in ["dr_grpo", "grpo", "task_std", "tmn_reweight"])


def test_duplicate_name_raises():
    with pytest.raises(ValueError, match=r"'grpo' is already registered \(golong\.advantage\.grpo\.GRPO\)"):
        register("grpo")(type("Another", (AdvantageEstimator,), {}))
    assert _ESTIMATORS["grpo"] is adv.GRPO


def test_register_needs_a_subclass_and_a_plain_name():
    with pytest.raises(TypeError, match="subclass of golong.advantage.AdvantageEstimator"):
        register("not_an_estimator")(object)
    with pytest.raises(ValueError, match="may not contain ':'"):
        register("a:b")(type("X", (AdvantageEstimator,), {}))


def test_a_registered_subclass_builds_by_name():
    class Negated(AdvantageEstimator):
        def compute(self, batch):
            return -batch.centered

    register("test_negated")(Negated)
    try:
        assert build("test_negated")([1.0, 0.0], [0, 0], [0, 0]).tolist() == [-0.5, 0.5]
    finally:
        del _ESTIMATORS["test_negated"]


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"'tmn_reweight': bad parameters .*'alpah'.* It accepts: alpha, reweight, "
                                          r"delta \(algorithm\.advantage\.params\)\. Did you mean: 'alpah' -> 'alpha'\?"):
        build("tmn_reweight", alpah=0.5)
    with pytest.raises(ConfigError, match="It accepts: no parameters"):
        build("dr_grpo", delta=1e-6)  # Dr.GRPO divides by nothing: a delta would be silently unused


@pytest.mark.parametrize("name,params,message", [
    ("tmn_reweight", {"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ("tmn_reweight", {"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ("tmn_reweight", {"alpha": "high"}, "alpha must be a number"),
    ("tmn_reweight", {"reweight": "yes"}, "reweight must be true or false"),
    ("tmn_reweight", {"delta": 0}, "delta must be a positive number"),
    ("grpo", {"delta": -1e-6}, "delta must be a positive number"),
    ("task_std", {"delta": True}, "delta must be a number"),
])
def test_bad_parameter_values(name, params, message):
    with pytest.raises(ValueError, match=message):
        build(name, **params)


def test_numbers_written_as_yaml_strings_are_accepted():
    # PyYAML reads `delta: 1e-6` (no dot) as the string "1e-6".
    estimator = build("tmn_reweight", alpha="0.5", delta="1e-6")
    assert (estimator.alpha, estimator.delta) == (0.5, 1e-6)


# ------------------------------------------------------------------------------------------------
# A subclass defined outside the package (tests/custom_estimator.py)

# Hand-worked values of MyEstimator(clip=1.0), GRPO clipped to [-1, 1]:
#   group 5 [1, 0, 0, 0]: mu 0.25, sigma 0.5 -> 0.75 / (0.5 + delta) = 1.499997 clipped to 1; -0.25 / (0.5 + delta)
#   group 9 [0.2, 0.6]:   mu 0.4, sigma = sqrt(0.2^2 * 2 / 1) = sqrt(0.08) -> -+0.2 / (sqrt(0.08) + delta)
#   group 2 [0.3]:        singleton -> 0
CUSTOM_BATCH = ([1.0, 0.0, 0.2, 0.0, 0.6, 0.0, 0.3], [5, 5, 9, 5, 9, 5, 2], [0, 0, 1, 0, 1, 0, 1])
CUSTOM_EXPECTED = [1.0, -0.25 / (0.5 + D), -0.2 / (math.sqrt(0.08) + D), -0.25 / (0.5 + D),
                   0.2 / (math.sqrt(0.08) + D), -0.25 / (0.5 + D), 0.0]


def check_custom(estimator: AdvantageEstimator) -> None:
    a = estimator(*CUSTOM_BATCH)
    torch.testing.assert_close(a, torch.tensor(CUSTOM_EXPECTED, dtype=torch.float32))
    assert estimator.last_stats.extra == {"clipped_fraction": pytest.approx(1 / 7)}  # one row of 7 was clipped
    assert "advantage/clipped_fraction" in estimator.last_stats.as_metrics()


def test_import_path_builds_a_subclass_outside_the_package():
    from tests.custom_estimator import MyEstimator

    estimator = build("tests.custom_estimator:MyEstimator", clip=1.0)
    assert type(estimator) is MyEstimator and estimator.clip == 1.0
    check_custom(estimator)
    with pytest.raises(ConfigError, match=r"It accepts: clip, delta .*'clips' -> 'clip'"):
        build("tests.custom_estimator:MyEstimator", clips=1.0)


def test_yaml_recipe_selects_a_subclass_outside_the_package(tmp_path):
    recipe = tmp_path / "custom.yaml"
    recipe.write_text("model: {path: unused}\n"
                      "algorithm:\n"
                      "  advantage:\n"
                      "    name: tests.custom_estimator:MyEstimator\n"
                      "    params: {clip: 5.0, delta: 1e-6}\n")
    config = load_config(str(recipe), ["algorithm.advantage.params.clip=1.0"]).algorithm.advantage
    assert config.params == {"clip": 1.0, "delta": "1e-6"}  # PyYAML leaves `1e-6` a string
    check_custom(build(config.name, **config.params))


@pytest.mark.parametrize("path,message", [
    ("tests.no_such_module:MyEstimator", r"cannot import module 'tests\.no_such_module'.*PYTHONPATH"),
    ("tests.custom_estimator:MyEstimatr", r"has no 'MyEstimatr'; estimator classes there: MyEstimator"),
    ("golong.advantage.batch:GroupedRewards", r"is not a subclass of golong\.advantage\.AdvantageEstimator"),
    ("tests.custom_estimator:", r"must look like package\.module:ClassName"),
])
def test_import_path_errors(path, message):
    with pytest.raises(ConfigError, match=message):
        build(path)


def test_config_rejects_a_malformed_import_path():
    with pytest.raises(ConfigError, match=r"algorithm\.advantage\.name: 'a:b:c' is not an import path"):
        load_config(None, ["model.path=unused", "algorithm.advantage.name=a:b:c"])


# ------------------------------------------------------------------------------------------------
# Inputs and outputs


def test_lists_tensors_and_any_int_dtype_are_accepted():
    from_lists = build("grpo")([1.0, 0.0, 0.5, 0.25], [3, 3, 8, 8], [1, 1, 1, 1])
    from_tensors = build("grpo")(torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=torch.float32),
                                 torch.tensor([3, 3, 8, 8], dtype=torch.int32), torch.tensor([1, 1, 1, 1]))
    assert from_lists.dtype == torch.float32 and from_lists.shape == (4,)
    assert torch.equal(from_lists, from_tensors)


def test_python_floats_keep_double_precision():
    # 0.1 as float32 is 0.10000000149; a list must not pass through float32 on its way in.
    batch = GroupedRewards.build([0.1, 0.3], [0, 0], [0, 0])
    assert batch.rewards.tolist() == [0.1, 0.3] and batch.group_mean.item() == (0.1 + 0.3) / 2


def test_non_finite_rewards_name_the_rows():
    with pytest.raises(ValueError, match=r"rewards must be finite; 2 are not: row 1 \(group 4, task 0\): nan, "
                                         r"row 3 \(group 5, task 1\): inf"):
        build("grpo")([0.0, float("nan"), 1.0, float("inf")], [4, 4, 5, 5], [0, 0, 1, 1])


@pytest.mark.parametrize("rewards,groups,tasks,error,message", [
    ([1.0, 0.0], [0, 0, 0], [0, 0, 0], ValueError, "got lengths 2, 3 and 3"),
    ([[1.0, 0.0]], [[0, 0]], [[0, 0]], ValueError, r"rewards must be 1-D .* shape \(1, 2\)"),
    ([1.0, 0.0], [0.0, 0.0], [0, 0], TypeError, "group_ids must hold integers"),
    ([1.0, 0.0], [0, 0], [True, True], TypeError, "task_ids must hold integers"),
    ([], [], [], ValueError, "the batch is empty"),
    ([1.0, 0.0, 1.0, 0.5], [7, 7, 8, 8], [0, 1, 2, 2], ValueError,
     r"every response of a prompt must have the same task id: group 7 has tasks \[0, 1\]"),
])
def test_malformed_inputs(rewards, groups, tasks, error, message):
    with pytest.raises(error, match=message):
        build("tmn_reweight")(rewards, groups, tasks)


def test_a_subclass_output_is_checked():
    class WrongShape(AdvantageEstimator):
        def compute(self, batch):
            return batch.centered[:1]

    class NotFinite(AdvantageEstimator):
        def compute(self, batch):
            return batch.centered / 0.0

    with pytest.raises(RuntimeError, match=r"WrongShape\.compute must return a tensor of shape \(2,\), got \(1,\)"):
        WrongShape()([1.0, 0.0], [0, 0], [0, 0])
    with pytest.raises(RuntimeError, match=r"NotFinite\.compute returned non-finite advantages at rows \[0, 1\]"):
        NotFinite()([1.0, 0.0], [0, 0], [0, 0])
    with pytest.raises(NotImplementedError, match="must implement compute"):
        AdvantageEstimator()([1.0, 0.0], [0, 0], [0, 0])


# ------------------------------------------------------------------------------------------------
# The README section


def test_readme_example_runs_and_prints_what_it_says():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    text = readme.split("## Write your own advantage estimator", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    promised = re.search(r"^# (tensor\(.*\))$", blocks[1], flags=re.M).group(1)
    assert out.getvalue().strip() == promised
    assert namespace["estimator"].last_stats.extra == {"positive_fraction": pytest.approx(2 / 6)}
