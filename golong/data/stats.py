"""Dataset statistics: rows per task and reward type, prompt lengths, and a task x length-bin plot
like the paper's Figure 2.

Length is measured on a row's prompt messages (for native rows: context + question + instruction;
for long contexts that is the context). With a tokenizer it is in tokens; without one it is an
approximate count: whitespace-separated words, each CJK character counting as one.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from golong.data.schema import TASKS, Example

# Figure 2 spans 0.1K to 256K tokens; bins double from 4K.
BIN_EDGES = [0, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144]
BIN_LABELS = ["<1K", "1K-4K", "4K-8K", "8K-16K", "16K-32K", "32K-64K", "64K-128K", "128K-256K", ">=256K"]
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def approx_tokens(text: str) -> int:
    """Words plus CJK characters: a tokenizer-free length estimate."""
    return len(_CJK.findall(text)) + len(_CJK.sub(" ", text).split())


def prompt_text(example: Example) -> str:
    return "\n".join(m["content"] for m in example.messages)


def prompt_lengths(examples: list[Example], tokenizer=None) -> list[int]:
    """Length of each example's prompt messages, in tokens with `tokenizer`, else approximate."""
    if tokenizer is None:
        return [approx_tokens(prompt_text(e)) for e in examples]
    lengths = []
    for start in range(0, len(examples), 64):
        texts = [prompt_text(e) for e in examples[start:start + 64]]
        lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


@dataclass
class DatasetStats:
    rows_per_task: dict[str, int]
    rows_per_reward: dict[str, int]
    length_by_task: dict[str, dict[str, float]]  # task -> min, median, mean, max
    bin_counts: dict[str, list[int]]  # task -> rows per BIN_LABELS bin
    unit: str  # "tokens" or "approx. tokens"


def length_bin(length: int) -> int:
    return int(np.searchsorted(BIN_EDGES, length, side="right")) - 1


def compute_stats(examples: list[Example], lengths: list[int], unit: str) -> DatasetStats:
    tasks = [t for t in TASKS if any(e.task == t for e in examples)]
    by_task: dict[str, list[int]] = {t: [] for t in tasks}
    for e, n in zip(examples, lengths):
        by_task[e.task].append(n)
    length_by_task = {t: {"min": float(min(v)), "median": float(np.median(v)), "mean": float(np.mean(v)),
                          "max": float(max(v))} for t, v in by_task.items()}
    bin_counts = {t: [0] * len(BIN_LABELS) for t in tasks}
    for e, n in zip(examples, lengths):
        bin_counts[e.task][length_bin(n)] += 1
    return DatasetStats(
        rows_per_task={t: len(by_task[t]) for t in tasks},
        rows_per_reward=dict(sorted(Counter(e.reward_type for e in examples).items())),
        length_by_task=length_by_task, bin_counts=bin_counts, unit=unit)


def format_stats(stats: DatasetStats) -> str:
    total = sum(stats.rows_per_task.values())
    lines = [f"{total} rows; prompt lengths in {stats.unit}", "",
             f"{'task':<6}{'rows':>8}{'share':>8}{'min':>9}{'median':>9}{'mean':>9}{'max':>9}"]
    for task, n in stats.rows_per_task.items():
        s = stats.length_by_task[task]
        lines.append(f"{task:<6}{n:>8}{n / total:>8.1%}{s['min']:>9.0f}{s['median']:>9.0f}{s['mean']:>9.0f}{s['max']:>9.0f}")
    lines += ["", "rows per reward type: " + ", ".join(f"{k} {v}" for k, v in stats.rows_per_reward.items())]
    lines += ["", f"{'task':<6}" + "".join(f"{b:>11}" for b in BIN_LABELS)]
    lines += [f"{task:<6}" + "".join(f"{c:>11}" for c in counts) for task, counts in stats.bin_counts.items()]
    return "\n".join(lines)


def plot_stats(stats: DatasetStats, path: str) -> None:
    """A heatmap of rows per task (rows) and length bin (columns), like the paper's Figure 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(stats.bin_counts)
    grid = np.array([stats.bin_counts[t] for t in tasks])
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(tasks) + 1.8))
    ax.imshow(np.log1p(grid), cmap="Blues", aspect="auto")
    for (i, j), count in np.ndenumerate(grid):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(BIN_LABELS)), BIN_LABELS, rotation=30)
    ax.set_yticks(range(len(tasks)), [f"{t} ({stats.rows_per_task[t]})" for t in tasks])
    ax.set_xlabel(f"prompt length ({stats.unit})")
    ax.set_title("Rows per task and prompt length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
