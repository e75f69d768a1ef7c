"""CorpusQA (Lu et al., 2026), corpus-level multi-document reasoning, scored as in QwenLong-L1.5's
evaluation (Shen et al., 2025), which the paper follows (section 5.1, appendix C).

[Uncertain: no public release layout or official scorer was available to us when this was written. What is
implemented, and stated so that it can be checked against the release:]

Rows: `{id?, question, answer (a string or a list of accepted strings), context (a string) or documents
(a list of strings)}`, as JSON/JSONL/parquet. `length` (or a `length_bin`) is kept for the breakdown.

Prompt: the QwenLong-L1 family's document-QA template (TEMPLATE below): the corpus inside <text> tags, the
question, and "Therefore, the answer is (insert answer here)".

Metric: accuracy by an LLM judge of answer equivalence (QwenLong-L1's verifier prompt, EQUIVALENCE below,
replying `[[YES]]` or `[[NO]]`) between the gold answer and the model's final answer (the text after the
last "the answer is", else the whole answer after the reasoning block); any accepted answer judged
equivalent scores 1. A reply without a verdict scores 0 and is counted (judge_malformed).
"""
from __future__ import annotations

from golong.benchmarks.base import Benchmark, BenchItem, Score, after_last, register, row_id, text_field
from golong.benchmarks.frames import documents_text
from golong.benchmarks.judge import parse_yes_no
from golong.data.schema import DataError

TEMPLATE = """Please read the following text and answer the question below.

<text>
{context}
</text>

{question}

Format your response as follows: "Therefore, the answer is (insert answer here)"."""

EQUIVALENCE = """You are an expert in verifying if two answers are the same.
Your input is a problem and two answers, Answer 1 and Answer 2. You need to check if they are equivalent.
Your task is to determine if two answers are equivalent, without attempting to solve the original problem.
Compare the answers to verify they represent identical values or meaning, even when written in different forms or notations.

Your output must follow the following format:
1) Provide an explanation for why the answers are equivalent or not.
2) Then provide your final answer in the form of: [[YES]] or [[NO]]

Problem: {question}
Answer 1: {gold}
Answer 2: {prediction}"""


def final_answer(text: str) -> str:
    """The text after the last "the answer is" (quotes, parentheses and a final period trimmed), else all of it."""
    tail = after_last(text, "the answer is")
    answer = tail if tail is not None else text
    return answer.strip().strip('"').strip().removesuffix(".").strip().strip("()").strip()


class CorpusQA(Benchmark):
    name = "corpusqa"
    column = "CorpusQA"
    needs_judge = True
    distinctive_layout = False  # question/answer/context: any QA file looks like this; name it corpusqa=FILE

    def detect(self, row: dict) -> bool:
        return "question" in row and "answer" in row and ("documents" in row or "context" in row)

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        answer = row.get("answer")
        answers = [answer] if isinstance(answer, str) else answer
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise DataError(file, row_no, "answer", "expected a string or a non-empty list of strings")
        length = row.get("length_bin", row.get("length"))
        return BenchItem(
            benchmark=self.name, id=row_id(row, "id", file, row_no), question=text_field(row, "question", file, row_no),
            context=documents_text(row, file, row_no), gold=list(answers),
            groups={"length": str(length)} if length is not None else {}, file=file, row=row_no)

    def messages(self, item: BenchItem) -> list[dict]:
        return [{"role": "user", "content": TEMPLATE.format(context=item.context, question=item.question)}]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        prediction = final_answer(text)
        last = None
        for gold in item.gold:
            last = judge.decide(EQUIVALENCE.format(question=item.question, gold=gold, prediction=prediction), parse_yes_no)
            if last.value == 1.0:
                return last
        return last


register(CorpusQA())
