"""Reading and writing dataset rows: JSONL (one JSON object per line) and parquet.

Rows are numbered from 1: a JSONL row's number is its line number (blank lines are skipped but
still counted, so the number is what an editor shows); a parquet row's number is its position.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from golong.data.schema import DataError



def file_kind(path: str) -> str:
    """"jsonl" or "parquet", from the file name."""
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".jsonl"):
        return "jsonl"
    raise DataError(path, 0, "(file)", "unknown file type; use .jsonl or .parquet")


def read_rows(path: str) -> Iterator[tuple[int, dict | DataError]]:
    """Yield (row number, row) for every row; a row that is not a JSON object comes as a DataError."""
    if not os.path.exists(path):
        raise DataError(path, 0, "(file)", "file not found")
    if file_kind(path) == "parquet":
        import pyarrow.parquet as pq

        row_no = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
        return
    with open(path, encoding="utf-8") as f:
        for row_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield row_no, DataError(path, row_no, "(row)", f"not valid JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                yield row_no, DataError(path, row_no, "(row)", f"expected a JSON object, got {type(row).__name__}")
                continue
            yield row_no, row


def write_rows(path: str, rows: list[dict]) -> None:
    """Write rows as JSONL or parquet (by the file name), through a temporary file then a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    if file_kind(path) == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
