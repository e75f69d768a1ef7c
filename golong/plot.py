"""`golong plot RUN_DIR`: reward per task over training steps, read from the run's metrics.jsonl, to a PNG.

One curve per `reward/<task>/mean` key and a bold one for the overall `reward/mean`; each drawn raw (faint)
and smoothed with an exponential moving average (solid). When the run validated (trainer.val_every), a second
panel below draws the validation scores as they were logged (no smoothing: one point per validation, step 0
included): `val/<task>/mean_score` per task and a bold `val/macro`. Uses matplotlib's object API with the Agg
canvas, so it needs no display and leaves pyplot's global state alone.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

from golong.trainer.config import LoggingConfig
from golong.trainer.metrics import METRICS_FILE, read_metrics

PLOT_FILE = "reward_per_task.png"
OVERALL = "all"  # the label of the overall reward/mean curve
_TASK_REWARD = re.compile(r"^reward/(?P<task>[^/]+)/mean$")
VAL_MACRO = "val/macro"  # the label of the validation panel's bold curve
_TASK_VAL = re.compile(r"^val/(?P<task>[^/]+)/mean_score$")


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average: s_0 = x_0, s_t = weight * s_(t-1) + (1 - weight) * x_t."""
    smoothed: list[float] = []
    for x in values:
        smoothed.append(x if not smoothed else weight * smoothed[-1] + (1 - weight) * x)
    return smoothed


def reward_curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (steps, rewards): `all` from reward/mean, then one per task from reward/<task>/mean, by name.

    A step where a task's value is missing or not finite (no prompt of that task in the batch) is skipped
    for that task only.
    """
    return _curves(records, "reward/mean", OVERALL, _TASK_REWARD)


def val_curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """label -> (steps, scores) of the validations: `val/macro`, then one per task from
    val/<task>/mean_score, by name; {} for a run that never validated."""
    return _curves(records, VAL_MACRO, VAL_MACRO, _TASK_VAL)


def _curves(records, overall_key: str, overall: str, per_task: re.Pattern) -> dict[str, tuple[list[int], list[float]]]:
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for record in sorted(records, key=lambda r: r["step"]):
        for key, value in record.items():
            match = per_task.match(key)
            label = overall if key == overall_key else match.group("task") if match else None
            if label is None or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            steps, values = curves.setdefault(label, ([], []))
            steps.append(record["step"])
            values.append(float(value))
    tasks = sorted(label for label in curves if label != overall)
    return {label: curves[label] for label in ([overall] if overall in curves else []) + tasks}


def plot_run(run_dir: str, out_png: str | None = None, smoothing: float | None = None) -> str:
    """Draw `run_dir`/metrics.jsonl's reward curves to `out_png` (default `run_dir`/reward_per_task.png);
    return the PNG's path. `smoothing` is the EMA weight (default: logging.plot_smoothing's default)."""
    from matplotlib.figure import Figure

    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: RUN_DIR must be a training run's output_dir")
    records = read_metrics(path)
    curves, validation = reward_curves(records), val_curves(records)
    if not curves:
        raise ValueError(f"{path} has no reward/mean or reward/<task>/mean values to plot")
    weight = LoggingConfig().plot_smoothing if smoothing is None else smoothing
    out_png = out_png or os.path.join(run_dir, PLOT_FILE)

    fig = Figure(figsize=(9, 9.5) if validation else (9, 5.5), layout="constrained")
    ax, *val_ax = fig.subplots(2, 1, sharex=True) if validation else [fig.subplots()]
    colors = {label: f"C{i % 10}" for i, label in enumerate(sorted({*curves, *validation} - {OVERALL, VAL_MACRO}))}
    for label, (steps, values) in curves.items():
        overall = label == OVERALL
        color = "black" if overall else colors[label]
        ax.plot(steps, values, color=color, alpha=0.2, linewidth=1)
        ax.plot(steps, ema(values, weight), color=color, linewidth=2.5 if overall else 1.5,
                label="reward/mean" if overall else label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean reward (EMA {weight:g}; raw faint)")
    ax.set_title(f"Reward per task: {os.path.basename(os.path.abspath(run_dir))}")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    for vax in val_ax:  # the validation panel: the same colour per task as above
        for label, (steps, values) in validation.items():
            macro = label == VAL_MACRO
            vax.plot(steps, values, color="black" if macro else colors[label], marker="o", markersize=3,
                     linewidth=2.5 if macro else 1.5, label=label)
        vax.set_xlabel("step")
        vax.set_ylabel("validation mean_score")
        vax.set_title("Validation (data.val_files, rollout.val_* sampling)")
        vax.grid(alpha=0.3)
        vax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def _plot_command(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out, args.smoothing))
    return 0


def add_plot_command(subparsers) -> None:
    """Register `golong plot RUN_DIR [--out PNG] [--smoothing W]`; the parser's `func(args)` runs it."""
    parser = subparsers.add_parser("plot", help="Draw a run's reward per task over steps to a PNG.")
    parser.add_argument("run_dir", help="A training run's output_dir (it holds metrics.jsonl).")
    parser.add_argument("--out", default=None, help=f"PNG path (default RUN_DIR/{PLOT_FILE}).")
    parser.add_argument("--smoothing", type=float, default=None,
                        help=f"EMA weight in [0, 1); 0 draws raw values (default {LoggingConfig().plot_smoothing}).")
    parser.set_defaults(func=_plot_command)
