"""Pass-rate difficulty calibration (paper section 3.4, P3 multi-stage verification).

Every row gets G rollouts from a first model; its pass rate p1 is the fraction of them that pass.

    stage 1:  p1 > 0.75 -> easy,   0.5 <= p1 <= 0.75 -> medium,   p1 < 0.5 -> unsolved
    stage 2 (unsolved rows, G rollouts of a second, stronger model, pass rate p2):
              p2 > 0.75 -> medium, 0.25 <= p2 <= 0.75 -> hard,    p2 < 0.25 -> discarded

The paper says "between 0.5 and 0.75" and "between 0.25 and 0.75"; both ends of those ranges are
taken as inclusive, so with G = 8, 6/8 passes is medium and 2/8 is hard. Discarded rows (never solved
by either model: likely label noise) are left out of the output. Without a second model, unsolved
rows keep the label `unsolved`.

What counts as a pass: the paper's calibration covers binary rewards only (EM, accuracy: r in {0, 1}).
golong calls a response passing when its reward is at least `pass_threshold` (reward.pass_threshold,
0.5 by default; `--pass-threshold` on the command line), which for binary rewards is the same as
r = 1 and for continuous rewards (F1, NDCG, ROUGE-L ...) is a tunable bar.

Sampling defaults to the training setting (temperature 1.0, top-p 1.0, section 5.1) with G = 8.
Under torchrun each stage's engine serves its share of the rows; stage 2's engine starts after stage 1's
shutdown tore down torch.distributed, and rejoins the world first (RolloutEngine, golong.world.rejoin_world).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

LABELS = ("easy", "medium", "hard", "unsolved", "discarded")


def pass_rate(scores: list[float], pass_threshold: float) -> float:
    """The fraction of a row's G rewards that are at least `pass_threshold`."""
    if not scores:
        raise ValueError("pass_rate of a row with no scored responses")
    return sum(s >= pass_threshold for s in scores) / len(scores)


def stage1_label(p1: float) -> str:
    """Section 3.4 stage 1 (first model)."""
    if p1 > 0.75:
        return "easy"
    return "medium" if p1 >= 0.5 else "unsolved"


def stage2_label(p2: float) -> str:
    """Section 3.4 stage 2 (second model, on stage-1 unsolved rows)."""
    if p2 > 0.75:
        return "medium"
    return "hard" if p2 >= 0.25 else "discarded"


def difficulty(p1: float, p2: float | None) -> str:
    """The final label of a row from its stage-1 pass rate and, if it went there, its stage-2 one."""
    label = stage1_label(p1)
    if label == "unsolved" and p2 is not None:
        return stage2_label(p2)
    return label


@dataclass
class CalibrationSummary:
    counts: dict[str, int]  # label -> rows

    def ratio_line(self) -> str:
        """`easy:medium:hard = a:b:c` in rows and as shares of those three labels (paper: about 3:6:1)."""
        e, m, h = (self.counts.get(k, 0) for k in ("easy", "medium", "hard"))
        total = e + m + h
        shares = ":".join(f"{10 * x / total:.1f}" for x in (e, m, h)) if total else "-"
        line = f"easy:medium:hard = {e}:{m}:{h} (= {shares} out of 10; the paper's was about 3:6:1)"
        others = [f"{k} {self.counts[k]}" for k in ("unsolved", "discarded") if self.counts.get(k)]
        return line + (f"; {', '.join(others)}" if others else "")


def summarize(labels: list[str]) -> CalibrationSummary:
    counts = Counter(labels)
    return CalibrationSummary(counts={k: counts.get(k, 0) for k in LABELS})


def annotate(row: dict, released: bool, label: str, p1: float, p2: float | None) -> dict:
    """The row with its label and pass rates written in: top level for native rows, in `extra_info`
    for released (verl) records, where verl keeps per-row metadata."""
    fields = {"difficulty": label, "pass_rate": p1}
    if p2 is not None:
        fields["pass_rate_stage2"] = p2
    if released:
        return {**row, "extra_info": {**(row.get("extra_info") or {}), **fields}}
    return {**row, **fields}


@dataclass
class CalibrationRun:
    summary: CalibrationSummary
    rows_written: int
    rows_skipped_too_long: int  # prompts over the length limit: not generated, not written


def run_calibration(train_file: str, out_file: str, model: str, model2: str | None, rollout_cfg, reward_cfg,
                    data_cfg, world) -> CalibrationRun:
    """Label every row of `train_file` by pass rate (stage 2 with `model2` when given); write `out_file`
    (rank 0). `world`: golong.world.World."""
    from golong.data.loader import load_examples
    from golong.data.rowio import read_rows, write_rows
    from golong.rollout.collect import collect_for_examples

    loaded = load_examples([train_file], data_cfg)
    examples = loaded.examples
    threshold = reward_cfg.pass_threshold
    stage1 = collect_for_examples(examples, model, rollout_cfg, reward_cfg, data_cfg, world, model_key="--model")
    p1 = [pass_rate(s, threshold) if s else None for s in stage1.per_example(len(examples))[0]]
    unsolved = [i for i, p in enumerate(p1) if p is not None and stage1_label(p) == "unsolved"]
    p2: dict[int, float] = {}
    if model2 and unsolved:
        stage2 = collect_for_examples([examples[i] for i in unsolved], model2, rollout_cfg, reward_cfg, data_cfg, world,
                                      model_key="--model2")
        p2 = {i: pass_rate(s, threshold) for i, s in zip(unsolved, stage2.per_example(len(unsolved))[0]) if s}

    raw = {row_no: row for row_no, row in read_rows(train_file)}
    released = loaded.formats[train_file] == "released"
    labels, rows = [], []
    for i, example in enumerate(examples):
        if p1[i] is None:
            continue
        label = difficulty(p1[i], p2.get(i))
        labels.append(label)
        if label != "discarded":
            rows.append(annotate(raw[example.row], released, label, p1[i], p2.get(i)))
    if world.is_main:
        write_rows(out_file, rows)
    return CalibrationRun(summary=summarize(labels), rows_written=len(rows), rows_skipped_too_long=stage1.num_filtered)
