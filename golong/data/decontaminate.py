"""n-gram decontamination (paper section 3.4, P4): drop training rows that share an n-gram with a benchmark.

Tokens: the text lowercased (Unicode NFKC first), punctuation removed (Unicode categories P and S,
which cover all of ASCII `string.punctuation`), split on whitespace, and each
CJK character (ideographs and kana) its own token, since Chinese and Japanese put no spaces between
words (Korean does, so Hangul splits on whitespace like other scripts). A training row is
dropped when its question has any n consecutive tokens that also occur consecutively in any
benchmark question (n = 13 in the paper). Text shorter than n tokens has no n-gram and never matches.

Benchmark files (`--bench`): `NAME=FILE` reads FILE with the released-format loader of benchmark NAME
(golong/benchmarks/: longbench_v2, mrcr, longbench_qa, docmath, frames, corpusqa) and compares the
loader's question text (its context too with `--bench-text context|both`); a plain FILE is read by the
benchmark whose release layout its first row has (LongBench-V2's choice_A..D, MRCR's
random_string_to_prepend, LongBench's input/answers, DocMath's paragraphs/ground_truth, Frames' Prompt/
Answer; CorpusQA has no layout of its own: name it, corpusqa=FILE), and otherwise by `--field` (always
by `--field` when one is given).

A dropped row is counted against every benchmark file it overlaps, so the per-file counts can sum to
more than the number of rows dropped. Kept rows are written unchanged (JSONL lines byte for byte,
parquet rows through pyarrow) and in their order.
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from golong.data.rowio import file_kind, read_rows
from golong.data.schema import DataError, is_released_record


# CJK ideographs (with extensions and compatibility forms) and kana.
_CJK = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f])")


_NOT_WORD = re.compile(r"[^\w\s]|_")  # the only characters that can be punctuation or symbols


def _drop_punctuation(match: re.Match) -> str:
    return "" if unicodedata.category(match[0])[0] in "PS" else match[0]  # keeps e.g. combining marks


def ngram_tokens(text: str) -> list[str]:
    """Lowercase, remove punctuation, split on whitespace; every CJK character is a token."""
    text = _NOT_WORD.sub(_drop_punctuation, unicodedata.normalize("NFKC", text).lower())
    return _CJK.sub(r" \1 ", text).split()


def ngrams(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    return (tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def row_question(row: dict, field: str) -> str | None:
    """The text to compare: `field` (dotted paths reach nested fields); released records keep the
    question in `extra_info.question`, which `question` falls back to."""
    value = row
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None and field == "question" and is_released_record(row):
        value = (row.get("extra_info") or {}).get("question")
    return value if isinstance(value, str) else None


@dataclass
class DecontaminationResult:
    kept_rows: int
    dropped_rows: int
    dropped_per_bench: dict[str, int]  # benchmark file -> training rows overlapping it
    dropped_row_numbers: list[int]  # rows of the training file that were dropped


def question_ngrams(path: str, n: int, field: str) -> Iterator[tuple[int, Iterator[tuple[str, ...]]]]:
    """(row number, the n-grams of its question) for every row of `path`; a bad row raises DataError."""
    for row_no, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        question = row_question(row, field)
        if question is None:
            raise DataError(path, row_no, field, "missing or not a string (set --field)")
        yield row_no, ngrams(ngram_tokens(question), n)


BENCH_TEXTS = ("question", "context", "both")


@dataclass
class BenchSource:
    """One --bench entry: the file, and the benchmark loader reading it (None: the `field` of each row)."""

    entry: str  # as given (what the summary names)
    path: str
    benchmark: str | None


def bench_source(entry: str, autodetect: bool) -> BenchSource:
    """`NAME=FILE` (NAME a registered benchmark), or FILE, autodetected when `autodetect` (module docstring)."""
    from golong.benchmarks import detect_benchmark, get_benchmark, read_bench_rows

    name, sep, path = entry.partition("=")
    if sep and not os.path.exists(entry):
        get_benchmark(name, "--bench")  # an unknown NAME lists the valid ones
        return BenchSource(entry, path, name)
    if not autodetect or not entry.lower().endswith((".json", ".jsonl", ".parquet", ".tsv", ".csv")):
        return BenchSource(entry, entry, None)
    first = next(read_bench_rows(entry), None)
    bench = detect_benchmark(first[1]) if first else None
    return BenchSource(entry, entry, bench.name if bench else None)


def bench_texts(source: BenchSource, field: str, text: str) -> Iterator[str]:
    """The texts of one benchmark file to take n-grams from."""
    if source.benchmark is None:
        for row_no, row in read_rows(source.path):
            if isinstance(row, DataError):
                raise row
            question = row_question(row, field)
            if question is None:
                raise DataError(source.path, row_no, field, "missing or not a string (set --field)")
            if text in ("question", "both"):
                yield question
            if text in ("context", "both") and isinstance(row.get("context"), str):
                yield row["context"]
        return
    from golong.benchmarks import get_benchmark, read_bench_rows

    bench = get_benchmark(source.benchmark, "--bench")
    for row_no, row in read_bench_rows(source.path):
        item = bench.parse(row, source.path, row_no)
        if text in ("question", "both"):
            yield item.question
        if text in ("context", "both") and item.context:
            yield item.context


def bench_ngrams(sources: list[BenchSource], n: int, field: str, text: str = "question") -> dict[tuple[str, ...], set[int]]:
    """n-gram -> indices of the benchmark files whose texts contain it."""
    index: dict[tuple[str, ...], set[int]] = {}
    for b, source in enumerate(sources):
        for t in bench_texts(source, field, text):
            for gram in ngrams(ngram_tokens(t), n):
                index.setdefault(gram, set()).add(b)
    return index


def decontaminate(train_file: str, bench_files: list[str], out_file: str, n: int = 13,
                  field: str = "question", *, bench_text: str = "question", autodetect: bool = True) -> DecontaminationResult:
    """Write the rows of `train_file` that share no n-gram with any benchmark question to `out_file`.
    bench_files: --bench entries (FILE or NAME=FILE, module docstring); bench_text: which benchmark text
    is compared (question, context or both); autodetect: read plain files by their benchmark's loader."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if bench_text not in BENCH_TEXTS:
        raise ValueError(f"--bench-text must be one of {', '.join(BENCH_TEXTS)}, got {bench_text!r}")
    if file_kind(out_file) != file_kind(train_file):
        raise ValueError(f"--out {out_file!r} must have the training file's type ({file_kind(train_file)}), "
                         "so that kept rows are written unchanged")
    sources = [bench_source(entry, autodetect) for entry in bench_files]
    index = bench_ngrams(sources, n, field, bench_text)
    dropped_per_bench = {path: 0 for path in bench_files}
    dropped: list[int] = []
    kept: list[int] = []
    for row_no, grams in question_ngrams(train_file, n, field):
        hits: set[int] = set()
        for gram in grams:
            hits |= index.get(gram, set())
        if hits:
            dropped.append(row_no)
            for b in hits:
                dropped_per_bench[bench_files[b]] += 1
        else:
            kept.append(row_no)
    _write_kept(train_file, out_file, set(kept))
    return DecontaminationResult(kept_rows=len(kept), dropped_rows=len(dropped), dropped_per_bench=dropped_per_bench,
                                 dropped_row_numbers=dropped)


def _write_kept(train_file: str, out_file: str, kept: set[int]) -> None:
    tmp = f"{out_file}.tmp"
    if file_kind(train_file) == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(train_file)
        mask = pa.array([i + 1 in kept for i in range(table.num_rows)])
        pq.write_table(table.filter(mask), tmp)
    else:
        with open(train_file, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for row_no, line in enumerate(src, start=1):
                if row_no in kept:
                    dst.write(line if line.endswith("\n") else line + "\n")
    os.replace(tmp, out_file)


def summary_lines(result: DecontaminationResult, n: int) -> list[str]:
    lines = [f"{n}-gram decontamination: kept {result.kept_rows}, dropped {result.dropped_rows}"]
    lines += [f"  {path}: {count} rows dropped" for path, count in result.dropped_per_bench.items()]
    return lines

