"""T5: IoU-based structured match of a JSON table `{"columns": [...], "data": [[...], ...]}`."""
from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal

from golong.rewards.extract import Answer, last_tagged, normalize
from golong.rewards.registry import ScoringRules, register

_CODE_FENCE = re.compile(r"^```[\w-]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def table_json(answer: Answer) -> str:
    """The JSON of a T5 answer: inside the last <answer>...</answer>, else the answer area; a code
    fence around it (```json ... ```) is dropped."""
    tagged = last_tagged(answer.text, "<answer>", "</answer>")
    text = (answer.area if tagged is None else tagged).strip()
    fenced = _CODE_FENCE.match(text)
    return fenced[1].strip() if fenced else text


_NUMERIC = re.compile(r"\s*[-+]?\.?\d")  # how every finite number Decimal reads starts


def as_number(text: str) -> Decimal | None:
    """The exact decimal value of a string that is a finite number, else None."""
    if not _NUMERIC.match(text):
        return None
    try:
        number = Decimal(text.strip())
    except (ArithmeticError, ValueError):  # decimal's errors are ArithmeticErrors
        return None
    return number if number.is_finite() else None


def cell_key(value) -> tuple[str, object]:
    """A cell compared by value: numbers (and strings that are numbers) as exact decimals, which
    compare and hash by value, so 1, 1.0, "1" and "1e0" are one key; other strings normalized;
    anything else (null, booleans, nested values) as compact JSON."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("number", value)
    if isinstance(value, (float, str)):
        number = as_number(repr(value) if isinstance(value, float) else value)
        if number is not None:
            return ("number", number)
        if isinstance(value, str):
            return ("text", normalize(value))
    return ("json", normalize(json.dumps(value, ensure_ascii=False, sort_keys=True)))


def parse_table(text) -> tuple[list[str], list[tuple]]:
    """(normalized column names, row keys) of a table given as JSON text or as a dict.

    A table is a JSON object with a `columns` list and a `data` list (appendix B.7's format);
    anything else (`{}`, `{"answer": "Berlin"}`, a list, a string) is not one and raises ValueError."""
    table = json.loads(text) if isinstance(text, str) else text
    if not (isinstance(table, dict) and isinstance(table.get("columns"), list) and isinstance(table.get("data"), list)):
        raise ValueError('a table is a JSON object {"columns": [...], "data": [...]}')
    raw_columns = table["columns"]
    rows = []
    for row in table["data"]:
        if isinstance(row, dict):  # {"column": value, ...}: values in column order when it names them all
            named = len(row) == len(raw_columns) and all(isinstance(c, str) and c in row for c in raw_columns)
            row = [row[c] for c in raw_columns] if named else list(row.values())
        elif not isinstance(row, list):
            row = [row]
        rows.append(tuple(cell_key(v) for v in row))
    return [normalize(str(c)) for c in raw_columns], rows


def reorder(rows: list[tuple], columns: list[str], target: list[str]) -> list[tuple]:
    """Rows of a table whose columns are a permutation of `target`, with cells in `target` order."""
    if columns == target or sorted(columns) != sorted(target) or len(set(target)) != len(target):
        return rows
    order = [columns.index(c) for c in target]
    return [tuple(row[i] for i in order) if len(row) == len(order) else row for row in rows]


@register("iou")
def table_iou(answer: Answer, gold, rules: ScoringRules) -> float:
    """T5 (appendix B.7: "IoU-based Structured Match, which deserializes both the predicted JSON and
    the reference JSON into structured objects and computes the Intersection-over-Union of their
    attributes"; the answer is `{"columns": [...], "data": [...]}` between <answer> tags, and
    `{"columns": [], "data": []}` when the answer cannot be inferred from the tables).

    |P ∩ G| / |P ∪ G| over the rows as multisets of tuples of cell keys (see `cell_key`). Column
    order does not matter when the predicted columns are a permutation of the gold's (cells are
    reordered to the gold's order). An explicit empty table against the empty gold is the correct
    "cannot be inferred" answer and scores 1. An answer whose JSON does not parse, or is not a table
    (`{}`, `{"answer": "Berlin"}`: no `columns` and `data` lists), scores 0, even against the empty
    gold: saying nothing is not the same as saying the tables cannot answer.
    """
    gold_columns, gold_rows = parse_table(gold)
    try:
        columns, rows = parse_table(table_json(answer))
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return 0.0
    predicted, expected = Counter(reorder(rows, columns, gold_columns)), Counter(gold_rows)
    union = sum((predicted | expected).values())
    return 1.0 if union == 0 else sum((predicted & expected).values()) / union
