"""golong.plot: reward curves from metrics.jsonl, the PNG, and the `golong plot` command."""
import argparse
import json
import math

import pytest
from matplotlib.image import imread

from golong.plot import PLOT_FILE, add_plot_command, ema, plot_run, reward_curves


def test_ema_by_hand():
    assert ema([0.0, 1.0, 1.0, 0.0], 0.5) == [0.0, 0.5, 0.75, 0.375]
    assert ema([0.2, 0.9], 0.0) == [0.2, 0.9]


def test_reward_curves_overall_first_tasks_by_name_gaps_skipped():
    records = [
        {"step": 2, "reward/mean": 0.5, "reward/T2/mean": 1.0, "reward/T1/mean": math.nan, "reward/T1/pass_rate": 1.0},
        {"step": 1, "reward/mean": 0.25, "reward/T2/mean": 0.0, "reward/T1/mean": 0.5, "loss": 3.0},
        {"step": 3, "reward/mean": 0.75, "reward/T1/mean": 1.0},
    ]
    curves = reward_curves(records)
    assert list(curves) == ["all", "T1", "T2"]
    assert curves["all"] == ([1, 2, 3], [0.25, 0.5, 0.75])
    assert curves["T1"] == ([1, 3], [0.5, 1.0])
    assert curves["T2"] == ([1, 2], [0.0, 1.0])


def write_metrics(run_dir, steps=30):
    with open(run_dir / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            task = {f"reward/T{t}/mean": min(1.0, s * t / 60) for t in (1, 2, 7)}
            f.write(json.dumps({"step": s, "reward/mean": sum(task.values()) / 3, **task, "loss": 1.0}) + "\n")


def test_plot_run_writes_a_png_with_curves(tmp_path):
    write_metrics(tmp_path)
    path = plot_run(str(tmp_path))
    assert path == str(tmp_path / PLOT_FILE)
    image = imread(path)
    assert image.shape == (605, 990, 4)  # figsize 9 x 5.5 inches at 110 dpi
    colored = (abs(image[..., 0] - image[..., 1]) + abs(image[..., 1] - image[..., 2])) > 0.2
    assert colored.sum() > 500  # the task curves are drawn in color, not just axes and text


def test_plot_command(tmp_path, capsys):
    write_metrics(tmp_path, steps=5)
    parser = argparse.ArgumentParser(prog="golong")
    add_plot_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", str(tmp_path), "--out", str(tmp_path / "x" / "r.png"), "--smoothing", "0"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "x" / "r.png")
    assert imread(tmp_path / "x" / "r.png").ndim == 3


def test_plot_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        plot_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(ValueError, match="no reward/mean"):
        plot_run(str(tmp_path))


def test_val_curves_macro_first_tasks_by_name_step_0_included():
    from golong.plot import val_curves

    records = [
        {"step": 0, "val/macro": 0.3, "val/T2/mean_score": 0.4, "val/T1/mean_score": 0.2, "val/T1/pass@1": 0.0},
        {"step": 1, "reward/mean": 0.5},
        {"step": 2, "reward/mean": 0.6, "val/macro": 0.5, "val/T1/mean_score": 0.6, "val/T2/mean_score": 0.4,
         "val/mean_score": 0.5},
    ]
    curves = val_curves(records)
    assert list(curves) == ["val/macro", "T1", "T2"]
    assert curves["val/macro"] == ([0, 2], [0.3, 0.5]) and curves["T1"] == ([0, 2], [0.2, 0.6])
    assert val_curves([{"step": 1, "reward/mean": 0.5}]) == {}


def test_a_run_that_validated_gets_a_validation_panel(tmp_path):
    write_metrics(tmp_path, steps=6)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        for s in (0, 3, 6):
            f.write(json.dumps({"step": s, "val/macro": s / 10, "val/T1/mean_score": s / 12}) + "\n")
    image = imread(plot_run(str(tmp_path)))
    assert image.shape == (1045, 990, 4)  # figsize 9 x 9.5 inches: the reward panel and the validation panel
    lower = image[image.shape[0] // 2 + 60:]
    colored = (abs(lower[..., 0] - lower[..., 1]) + abs(lower[..., 1] - lower[..., 2])) > 0.2
    assert colored.sum() > 200  # the validation panel has a task curve
