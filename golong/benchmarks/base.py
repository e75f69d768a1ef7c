"""What every benchmark shares: one row as a `BenchItem`, the `Benchmark` interface and its registry, the
reader of the released file formats, middle truncation, and the response's answer text.

A benchmark module (one per benchmark) defines a `Benchmark` subclass and registers one instance:

    parse(row, file, row_no) -> BenchItem      the released row's question, context, gold and breakdown keys
    messages(item) -> list[dict]               the prompt as the benchmark's official code builds it
    score_answer(item, text, judge) -> Score   the official metric on one response's answer (in [0, 1]);
                                               `score` hands it the text after the reasoning block
    headline(rows) -> float                    the benchmark's reported number from the per-row scores

Data stays local: every loader reads the files the user downloaded, in the layout of the public release.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from golong.configlib import UsageError
from golong.data.schema import DataError
from golong.rewards.extract import reasoning_removed

# Score.status values: why a response scored what it did (the report counts each).
OK = "ok"
NO_ANSWER = "no_answer"  # the official extraction found no answer (malformed response): 0
UNFINISHED = "unfinished_reasoning"  # a <think> never closed (golong's extraction rule 1): 0
JUDGE_MALFORMED = "judge_malformed"  # the judge's reply had no readable decision: 0
JUDGE_ERROR = "judge_error"  # the judge request failed after its retries: 0
STATUSES = (OK, NO_ANSWER, UNFINISHED, JUDGE_MALFORMED, JUDGE_ERROR)


@dataclass
class Score:
    value: float  # in [0, 1]
    status: str = OK  # one of STATUSES
    extracted: Any = None  # what the metric compared (an option letter, a number, the answer text)


@dataclass
class BenchItem:
    """One benchmark row, as its release has it, ready to prompt and score."""

    benchmark: str  # registry name
    id: str  # the release's id (LongBench-V2 `_id`, DocMath `question_id`, ...) or FILE:ROW
    question: str  # the query text (decontamination compares these, as the paper does, section 3.4 P4)
    context: str  # the long document(s); "" when the row carries none (decontamination needs none)
    gold: Any  # what `score` compares against
    groups: dict[str, str] = field(default_factory=dict)  # breakdown key -> value, e.g. {"difficulty": "hard"}
    file: str = ""
    row: int = 0
    extra: dict = field(default_factory=dict)  # what `messages` needs besides question/context


class Benchmark:
    """A benchmark: its loader, prompt, metric and headline number (module docstring)."""

    name: str = ""  # registry name, e.g. "longbench_v2"
    column: str = ""  # its column in the paper's Table 5, e.g. "LBV2"
    needs_judge: bool = False  # the official metric asks an LLM judge (--judge-model)
    gold_field: str = "answer"  # the release's field holding the gold answer (error messages)
    distinctive_layout: bool = True  # its release's fields tell its rows apart (decontamination autodetects it)
    # How a prompt longer than the budget is handled: "middle" (keep the first and last halves of the token
    # budget, LongBench pred.py) or "skip" (the row is not generated and is counted, MRCR: its conversation
    # cannot be cut without losing the needles it asks about).
    truncation: str = "middle"
    # LongBench-V2 keeps budget // 2 first tokens and the other ceil(budget / 2) last; LongBench-V1 keeps
    # int(budget / 2) of each (one token fewer for an odd budget). True: V1's rule.
    truncation_equal_halves: bool = False

    def detect(self, row: dict) -> bool:
        """Whether `row` looks like a row of this benchmark's release (decontamination's autodetection)."""
        raise NotImplementedError

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        raise NotImplementedError

    def messages(self, item: BenchItem) -> list[dict]:
        raise NotImplementedError

    def score(self, item: BenchItem, response: str, judge, require_think_close: bool = False) -> Score:
        """The metric on the response's text after its reasoning block (final_text); a reasoning block never
        closed scores 0 (status unfinished_reasoning)."""
        text = final_text(response, require_think_close)
        if text is None:
            return Score(0.0, UNFINISHED)
        return self.score_answer(item, text, judge)

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        """The official metric on the answer text (the response after its reasoning block)."""
        raise NotImplementedError

    def headline(self, rows: list[tuple[BenchItem, list[float]]]) -> float | None:
        """The reported number (0-100) from each row's response scores: by default the mean over rows of
        the row's mean score (avg@G), times 100."""
        means = [sum(s) / len(s) for _, s in rows if s]
        return 100.0 * sum(means) / len(means) if means else None

    def breakdown(self, item: BenchItem, prompt_tokens: int) -> dict[str, str]:
        """The breakdown keys of one row (its `groups`; MRCR adds its length bin from the prompt tokens)."""
        return dict(item.groups)


_BENCHMARKS: dict[str, Benchmark] = {}


def register(bench: Benchmark) -> Benchmark:
    """Add a benchmark under its name; a name registered twice is an error."""
    if not bench.name:
        raise ValueError(f"{type(bench).__name__} has no name")
    if bench.name in _BENCHMARKS:
        raise ValueError(f"benchmark {bench.name!r} is already registered (by {type(_BENCHMARKS[bench.name]).__module__})")
    _BENCHMARKS[bench.name] = bench
    return bench


def benchmark_names() -> tuple[str, ...]:
    return tuple(_BENCHMARKS)


def get_benchmark(name: str, flag: str = "--benchmark") -> Benchmark:
    """The registered benchmark `name`; an unknown name is a UsageError (naming `flag`) listing the valid ones."""
    if name not in _BENCHMARKS:
        raise UsageError(f"{flag}: unknown benchmark {name!r}. Fix: use one of {', '.join(_BENCHMARKS)}")
    return _BENCHMARKS[name]


# ----------------------------------------------------------------------------------------------
# Released files


BENCH_FILE_TYPES = (".json", ".jsonl", ".parquet", ".tsv", ".csv")


def read_bench_rows(path: str) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a released benchmark file: a JSON array (LongBench-V2's data.json, DocMath-Eval's
    JSON files), JSONL (LongBench's per-dataset files), parquet (the Hugging Face exports, MRCR), or TSV/CSV
    with a header (Frames' test.tsv). Rows are numbered from 1; a bad row is a DataError."""
    from golong.data.rowio import read_rows

    if not os.path.exists(path):
        raise DataError(path, 0, "(file)", "file not found")
    lower = path.lower()
    if lower.endswith((".jsonl", ".parquet")):
        for row_no, row in read_rows(path):
            if isinstance(row, DataError):
                raise row
            yield row_no, row
    elif lower.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(path, 0, "(file)", f"not valid JSON: {e.msg} at line {e.lineno}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(path, 0, "(file)", "expected a JSON array of rows")
        for i, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(path, i, "(row)", f"expected a JSON object, got {type(row).__name__}")
            yield i, row
    elif lower.endswith((".tsv", ".csv")):
        csv.field_size_limit(1 << 30)  # Frames-style files with pasted articles have long cells
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter="\t" if lower.endswith(".tsv") else ","), start=1):
                yield i, dict(row)
    else:
        raise DataError(path, 0, "(file)", f"unknown file type; use one of {', '.join(BENCH_FILE_TYPES)}")


def load_items(bench: Benchmark, paths: list[str]) -> list[BenchItem]:
    """Every row of `paths` as a scorable item; a row without its gold answer is a DataError (a loader
    accepts one, so that decontamination reads answerless test splits)."""
    items = [bench.parse(row, path, row_no) for path in paths for row_no, row in read_bench_rows(path)]
    for item in items:
        if item.gold is None:
            raise DataError(item.file, item.row, bench.gold_field, "missing: this split has no answers to score "
                            "against (DocMath-Eval: use testmini)")
    return items


def text_field(row: dict, name: str, file: str, row_no: int, *, required: bool = True) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise DataError(file, row_no, name, "missing")
        return ""
    if not isinstance(value, str):
        raise DataError(file, row_no, name, f"expected a string, got {type(value).__name__}")
    return value


def row_id(row: dict, name: str, file: str, row_no: int) -> str:
    value = row.get(name)
    return str(value) if value is not None else f"{os.path.basename(file)}:{row_no}"


# ----------------------------------------------------------------------------------------------
# Prompts and responses


def middle_truncate(ids: list[int], budget: int, *, equal_halves: bool = False) -> list[int]:
    """Keep the first and last halves of a `budget`-token prompt (LongBench's pred.py, both versions).

    LongBench-V2: `input_ids[:max_len//2] + input_ids[-max_len//2:]`, which in Python keeps budget // 2
    tokens in front and ceil(budget / 2) at the end (`-max_len//2` is `(-max_len)//2`). LongBench-V1:
    `half = int(max_length/2)`, half in front and half at the end (equal_halves=True).
    """
    if budget < 2:
        raise ValueError(f"the truncation budget must be at least 2 tokens, got {budget}")
    if len(ids) <= budget:
        return list(ids)
    head = budget // 2
    tail = head if equal_halves else budget - head
    return list(ids[:head]) + list(ids[len(ids) - tail:])


def final_text(response: str, require_think_close: bool) -> str | None:
    """The response after its reasoning block (golong's extraction rule 1, golong/rewards/extract.py), or
    None when the reasoning never finished. Every benchmark scores this text: QwenLong-L1.5 evaluates
    thinking models on their answer, not on their reasoning."""
    return reasoning_removed(response, require_think_close)


def after_last(text: str, marker: str) -> str | None:
    """The text after the last case-insensitive `marker`, or None."""
    at = text.lower().rfind(marker.lower())
    return text[at + len(marker):] if at >= 0 else None
