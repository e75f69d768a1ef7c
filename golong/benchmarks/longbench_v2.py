"""LongBench-V2 (Bai et al., 2025; THUDM/LongBench, v2 `pred.py`, `prompts/0shot.txt`, `result.py`).

Release: `data.json` (Hugging Face THUDM/LongBench-v2), a JSON array of rows
`{_id, domain, sub_domain, difficulty ("easy"|"hard"), length ("short"|"medium"|"long"), question,
choice_A, choice_B, choice_C, choice_D, answer ("A".."D"), context}`.

Prompt: the release's 0-shot template (`prompts/0shot.txt`), filled as pred.py fills it ($DOC$, $Q$,
$C_A$ ... $C_D$). A prompt over the budget keeps its first budget//2 and last ceil(budget/2) tokens (pred.py).

Metric: accuracy of the option pred.py's `extract_answer` reads, after removing `*`:
`The correct answer is \\(([A-D])\\)`, else `The correct answer is ([A-D])`; no match scores 0.
golong's one addition (HEDGE_RULE): a response whose "The correct answer is" statements name more than one
distinct option (`(A) or (B)`, two statements disagreeing) scores 0; pred.py would take the first.
The report breaks the accuracy down by difficulty and length, as result.py does.
"""
from __future__ import annotations

import re

from golong.benchmarks.base import NO_ANSWER, OK, Benchmark, BenchItem, Score, register, row_id, text_field
from golong.data.schema import DataError

TEMPLATE_0SHOT = """Please read the following text and answer the question below.

<text>
$DOC$
</text>

What is the correct answer to this question: $Q$
Choices:
(A) $C_A$
(B) $C_B$
(C) $C_C$
(D) $C_D$

Format your response as follows: "The correct answer is (insert answer here)"."""

_WITH_PARENS = re.compile(r"The correct answer is \(([A-D])\)")
_BARE = re.compile(r"The correct answer is ([A-D])")
# Every option named in a statement: the text after each "The correct answer is" up to the sentence's end.
_STATEMENT = re.compile(r"The correct answer is([^\n.]*)", re.IGNORECASE)  # any case: a hedge is a hedge
_PAREN_OPTION = re.compile(r"\(([A-D])\)")
# Bare letters joined right after the phrase: "is A or B", "is B/C", "is A, D". (A bare letter elsewhere in
# the sentence is ordinary text: "The correct answer is (C) A sound argument".)
_BARE_PAIR = re.compile(r"^\s*\(?([A-D])\)?\s*(?:or|and|/|,|&)\s*\(?([A-D])\b")
HEDGE_RULE = True  # golong's addition: two distinct options named -> 0 (module docstring)


def extract_answer(response: str) -> str | None:
    """pred.py's extract_answer, plus HEDGE_RULE."""
    response = response.replace("*", "")
    m = _WITH_PARENS.search(response) or _BARE.search(response)
    if m is None:
        return None
    if HEDGE_RULE:
        named: set[str] = set()
        for statement in _STATEMENT.findall(response):
            named.update(_PAREN_OPTION.findall(statement))
            pair = _BARE_PAIR.match(statement)
            named.update(pair.groups() if pair else ())
        if len(named) > 1:
            return None
    return m[1]


class LongBenchV2(Benchmark):
    name = "longbench_v2"
    column = "LBV2"

    def detect(self, row: dict) -> bool:
        return "choice_A" in row and "question" in row

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        choices = {k: text_field(row, f"choice_{k}", file, row_no) for k in "ABCD"}
        answer = text_field(row, "answer", file, row_no).strip().strip("()")
        if answer not in choices:
            raise DataError(file, row_no, "answer", f"expected one of A, B, C, D, got {row['answer']!r}")
        return BenchItem(
            benchmark=self.name, id=row_id(row, "_id", file, row_no), question=text_field(row, "question", file, row_no),
            context=text_field(row, "context", file, row_no, required=False), gold=answer,
            groups={"difficulty": str(row.get("difficulty", "?")), "length": str(row.get("length", "?"))},
            file=file, row=row_no, extra={"choices": choices})

    def messages(self, item: BenchItem) -> list[dict]:
        c = item.extra["choices"]
        # pred.py fills the template with str.replace, in this order.
        prompt = (TEMPLATE_0SHOT.replace("$DOC$", item.context.strip()).replace("$Q$", item.question.strip())
                  .replace("$C_A$", c["A"].strip()).replace("$C_B$", c["B"].strip())
                  .replace("$C_C$", c["C"].strip()).replace("$C_D$", c["D"].strip()))
        return [{"role": "user", "content": prompt}]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        pred = extract_answer(text)
        if pred is None:
            return Score(0.0, NO_ANSWER)
        return Score(float(pred == item.gold), OK, extracted=pred)


register(LongBenchV2())
