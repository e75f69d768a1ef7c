"""DocMath-Eval (Zhao et al., 2024; yale-nlp/DocMath-Eval, its chain-of-thought prompt and
`evaluation` numeric comparison).

Release: one JSON file per subset (`simpshort`, `simplong`, `compshort`, `complong`; testmini carries the
answers, test does not), a JSON array of rows `{question_id, question, paragraphs: [...], tables: [...],
ground_truth, ...}`; JSONL/parquet exports of the same rows load too, and a row with a `context` string
uses it as the document. The subset is read from the file name (or the row's `subset`/`source`).

Prompt: DocMath-Eval's chain-of-thought setting: the financial-expert instruction that asks for step-by-step
reasoning ending with "Therefore, the answer is {final answer}", then the document (paragraphs, then the
markdown tables) and the question. [Uncertain: the release's exact wording and the order of paragraphs and
tables inside its context are reconstructed from memory of the repository; both are constants here.]

Metric (`get_acc` / `compare_two_numbers`): the final number of the response (the one after the last
"the answer is", else the last number of the response) against ground_truth: an integer ground truth needs
round(pred) == gt, a float one |pred - gt| <= REL_TOL x |gt|. Percentages: a prediction written "12%" or
"12" may mean 0.12 and "0.12" may mean 12%, so pred, pred / 100 and pred x 100 are each compared and any
match counts (SCALE_RULE). [Uncertain: DocMath-Eval extracts the CoT answer with an LLM and its tolerance
and percentage handling are reconstructed; REL_TOL and SCALE_RULE are the two knobs.]
"""
from __future__ import annotations

import math
import os
import re

from golong.benchmarks.base import NO_ANSWER, OK, Benchmark, BenchItem, Score, after_last, register, row_id, text_field
from golong.data.schema import DataError

SYSTEM = ("You are a financial expert, you are supposed to answer the given question based on the provided "
          "financial document context. You need to first think through the problem step by step, documenting "
          "each necessary step. Then you are required to conclude your response with the final answer in your "
          "last sentence as 'Therefore, the answer is {final answer}'. The final answer should be a numeric value.")
USER = "{context}\n\nQuestion: {question}\n\nLet's think step by step to answer the given question."
SUBSETS = ("simpshort", "simplong", "compshort", "complong")
REL_TOL = 1e-2  # relative tolerance of a float ground truth
SCALE_RULE = True  # compare pred, pred/100 and pred*100 (percent written as a fraction or the other way)

# A number: optional sign and currency, digits with thousands separators, decimals, optional exponent, then
# an optional percent sign.
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)\s*[$€£¥]?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE]([-+]?\d+))?\s*(%)?")


def parse_numbers(text: str) -> list[tuple[float, bool]]:
    """Every number in `text` in order, as (value, written with %)."""
    out = []
    for sign, digits, exponent, percent in _NUMBER.findall(text):
        value = float(digits.replace(",", "")) * (10 ** int(exponent) if exponent else 1)
        out.append((-value if sign else value, bool(percent)))
    return out


def extract_number(response: str) -> float | None:
    """The final answer's number: the first number after the last "the answer is", else the last number."""
    tail = after_last(response, "the answer is")
    numbers = parse_numbers(tail) if tail is not None else []
    if numbers:
        return numbers[0][0]
    numbers = parse_numbers(response)
    return numbers[-1][0] if numbers else None


def numbers_match(pred: float, gt: float | int, rel_tol: float = REL_TOL, scale: bool = SCALE_RULE) -> bool:
    """compare_two_numbers: round(pred) == gt for an integer gt, relative tolerance for a float one;
    with `scale`, pred / 100 and pred x 100 are candidates too."""
    if isinstance(gt, bool) or not isinstance(gt, (int, float)) or not math.isfinite(pred):
        return False
    candidates = [pred, pred / 100, pred * 100] if scale else [pred]
    for p in candidates:
        if isinstance(gt, int):
            if math.isfinite(p) and abs(p) < 1e18 and round(p) == gt:
                return True
        elif math.isclose(p, gt, rel_tol=rel_tol, abs_tol=1e-12):
            return True
    return False


def _subset(row: dict, file: str) -> str:
    for value in (row.get("subset"), row.get("source"), os.path.basename(file).lower(), str(row.get("question_id", ""))):
        if isinstance(value, str):
            for name in SUBSETS:
                if name in value.lower():
                    return name
    return "docmath"


def _ground_truth(value, file: str, row_no: int) -> float | int | None:
    if isinstance(value, bool):
        raise DataError(file, row_no, "ground_truth", "expected a number, got a boolean")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # CSV/TSV exports carry text: "12" stays an integer, "0.12" a float
        try:
            return int(value) if re.fullmatch(r"[-+]?\d+", value.strip()) else float(value)
        except ValueError:
            pass
    if value is None:
        return None  # the test split: decontamination reads it; scoring refuses it (load_items)
    raise DataError(file, row_no, "ground_truth", f"expected a number, got {value!r}")


def _strings(value, file: str, row_no: int, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise DataError(file, row_no, name, "expected a list of strings")


class DocMath(Benchmark):
    name = "docmath"
    column = "DocMath"
    gold_field = "ground_truth"

    def detect(self, row: dict) -> bool:
        return "ground_truth" in row and "question" in row and ("paragraphs" in row or "tables" in row)

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        context = row.get("context")
        if not isinstance(context, str):
            pieces = _strings(row.get("paragraphs"), file, row_no, "paragraphs") + _strings(row.get("tables"), file, row_no, "tables")
            context = "\n".join(pieces)
        return BenchItem(
            benchmark=self.name, id=row_id(row, "question_id", file, row_no),
            question=text_field(row, "question", file, row_no), context=context,
            gold=_ground_truth(row.get("ground_truth"), file, row_no), groups={"subset": _subset(row, file)},
            file=file, row=row_no)

    def messages(self, item: BenchItem) -> list[dict]:
        return [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": USER.format(context=item.context, question=item.question)}]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        pred = extract_number(text)
        if pred is None:
            return Score(0.0, NO_ANSWER)
        return Score(float(numbers_match(pred, item.gold)), OK, extracted=pred)


register(DocMath())
