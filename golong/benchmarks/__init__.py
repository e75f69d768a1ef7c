"""The paper's six long-context benchmarks (section 5.1, Table 5), each with its released file format,
its official prompt and metric, and middle truncation; `golong eval --benchmark NAME` / `--suite paper`
runs them, `golong data decontaminate --bench NAME=FILE` reads their files.

Importing this package registers them, in the order decontamination's autodetection tries them (the
most specific row layout first).
"""
from golong.benchmarks.base import (  # noqa: F401
    Benchmark,
    BenchItem,
    Score,
    benchmark_names,
    get_benchmark,
    load_items,
    middle_truncate,
    read_bench_rows,
    register,
)
from golong.benchmarks import longbench_v2, mrcr, longbench_qa, docmath, frames, corpusqa  # noqa: F401,E402


def detect_benchmark(row: dict) -> Benchmark | None:
    """The first registered benchmark with a layout of its own (Benchmark.distinctive_layout) that `row` has,
    or None."""
    from golong.benchmarks.base import _BENCHMARKS

    return next((b for b in _BENCHMARKS.values() if b.distinctive_layout and b.detect(row)), None)
