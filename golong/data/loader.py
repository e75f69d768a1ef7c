"""Load dataset files into Examples, telling native rows from released records, checking every row.

    data = load_examples(cfg.train_files, cfg)   # raises DataError on the first bad row, or skips
    data.examples, data.num_bad_rows_skipped      # and counts them, by cfg.on_bad_row

With `cfg.max_rows` the examples are a fixed random subset of the usable rows (`subset_rows`), taken
here, before any prompt is templated or tokenized.

With `cfg.format == "auto"` each file's format is told from its first row (released records have
`prompt` and `reward_model`, native rows do not); every row of the file must then be of that format.
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from golong.data.config import DataConfig
from golong.data.rowio import read_rows
from golong.data.schema import DataError, Example, example_from_native, example_from_released, is_released_record


@dataclass
class LoadedData:
    examples: list[Example]
    num_bad_rows_skipped: int  # 0 unless cfg.on_bad_row == "skip"
    bad_rows: list[DataError] = field(default_factory=list)  # the skipped rows' errors, in file order
    formats: dict[str, str] = field(default_factory=dict)  # file -> "native" | "released"
    num_rows_before_subset: int = 0  # usable rows before data.max_rows picked a subset (0: no subset taken)

    def task_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(e.task for e in self.examples).items()))


def iter_file(path: str, fmt: str = "auto") -> Iterator[tuple[str, Example | DataError]]:
    """Yield (format, Example or the row's DataError) for every row of one file."""
    for row_no, row in read_rows(path):
        if isinstance(row, DataError):
            yield fmt, row
            continue
        if fmt == "auto":
            fmt = "released" if is_released_record(row) else "native"
        convert = example_from_released if fmt == "released" else example_from_native
        try:
            yield fmt, convert(row, path, row_no)
        except DataError as e:
            yield fmt, e


def load_examples(files: list[str], cfg: DataConfig) -> LoadedData:
    """Every row of `files` as an Example; a bad row raises DataError, or is skipped and counted."""
    if not files:
        raise DataError("(no file)", 0, "data.train_files", "no dataset files given")
    data = LoadedData(examples=[], num_bad_rows_skipped=0)
    for path in files:
        fmt = cfg.format
        for fmt, item in iter_file(path, cfg.format):
            if isinstance(item, DataError):
                if cfg.on_bad_row == "error":
                    raise item
                data.bad_rows.append(item)
                data.num_bad_rows_skipped += 1
            else:
                data.examples.append(item)
        data.formats[path] = fmt
    if not data.examples:
        raise DataError(", ".join(files), 0, "(file)", f"no usable rows ({data.num_bad_rows_skipped} bad rows skipped)")
    if cfg.max_rows and len(data.examples) > cfg.max_rows:
        data.num_rows_before_subset = len(data.examples)
        data.examples = [data.examples[i] for i in subset_rows(len(data.examples), cfg.max_rows, cfg.subset_seed)]
    return data


def subset_rows(num_rows: int, size: int, seed: int) -> list[int]:
    """`size` of the row indices 0..num_rows-1, drawn uniformly without replacement, in file order.
    A pure function of its arguments (a string seed is hashed with SHA-512, the same in every process
    and Python version), so every rank and every resumed run trains on the same rows."""
    return sorted(random.Random(f"golong-subset:{seed}").sample(range(num_rows), size))
