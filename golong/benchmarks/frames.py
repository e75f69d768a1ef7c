"""Frames (Krishna et al., 2025; google/frames-benchmark, the paper's oracle setting and its autorater).

Release: `test.tsv` (Hugging Face google/frames-benchmark), columns `Prompt`, `Answer`, `reasoning_types`,
`wiki_links` (and `wikipedia_link_1` ...). The release carries links, not articles: golong fetches nothing,
so a row needs the linked articles' text you downloaded, in a `context` column (one string) or `documents`
(a JSON list of strings); without it the row cannot be prompted (decontamination needs only `Prompt`).

Prompt: the oracle setting, every linked article then the question. [Uncertain: the wording around the
articles is reconstructed; QwenLong-L1.5's exact template is not public to us.]

Metric: accuracy by an LLM judge with the Frames paper's autorater prompt (AUTORATER below): the judge
reads the question, the model's answer (after its reasoning block) and the gold answer and replies with
`Decision: TRUE|FALSE`. A reply with no decision scores 0 and is counted (judge_malformed).
"""
from __future__ import annotations

import json

from golong.benchmarks.base import Benchmark, BenchItem, Score, register, row_id, text_field
from golong.benchmarks.judge import parse_true_false
from golong.data.schema import DataError

PROMPT = "Here are the relevant Wikipedia articles:\n{context}\n\nBased on all the information, answer the query.\n\nQuery: {question}\n\n"

AUTORATER = """===Task===
I need your help in evaluating an answer provided by an LLM against a ground truth answer. Your task is to determine if the ground truth answer is present in the LLM's response. Please analyze the provided data and make a decision.
===Instructions===
1. Carefully compare the "Predicted Answer" with the "Ground Truth Answer".
2. Consider the substance of the answers - look for equivalent information or correct answers. Do not focus on exact wording unless the exact wording is crucial to the meaning.
3. Your final decision should be based on whether the meaning and the vital facts of the "Ground Truth Answer" are present in the "Predicted Answer:"
===Input Data===
- Question: {question}
- Predicted Answer: {response}
- Ground Truth Answer: {answer}
===Output Format===
Provide your final evaluation in the following format:
"Explanation:" (How you made the decision?)
"Decision:" ("TRUE" or "FALSE" )
Please proceed with the evaluation."""


def documents_text(row: dict, file: str, row_no: int) -> str:
    """The row's documents: `context` (a string) or `documents` (a list of strings, or its JSON text)."""
    if isinstance(row.get("context"), str):
        return row["context"]
    docs = row.get("documents")
    if isinstance(docs, str):
        try:
            docs = json.loads(docs)
        except json.JSONDecodeError:
            raise DataError(file, row_no, "documents", "expected a JSON list of strings") from None
    if docs is None:
        return ""
    if not (isinstance(docs, list) and all(isinstance(d, str) for d in docs)):
        raise DataError(file, row_no, "documents", "expected a list of strings")
    return "\n\n".join(docs)


class Frames(Benchmark):
    name = "frames"
    column = "Frames"
    needs_judge = True

    def detect(self, row: dict) -> bool:
        return "Prompt" in row and "Answer" in row

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        return BenchItem(
            benchmark=self.name, id=row_id(row, "Unnamed: 0", file, row_no), question=text_field(row, "Prompt", file, row_no),
            context=documents_text(row, file, row_no), gold=text_field(row, "Answer", file, row_no),
            groups={"reasoning_types": str(row.get("reasoning_types") or "?")}, file=file, row=row_no)

    def messages(self, item: BenchItem) -> list[dict]:
        if not item.context.strip():
            raise DataError(item.file, item.row, "context",
                            "Frames rows carry wiki links, not articles: add the linked articles' text as `context` "
                            "(or a `documents` list) to evaluate; golong downloads nothing")
        return [{"role": "user", "content": PROMPT.format(context=item.context, question=item.question)}]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        prompt = AUTORATER.format(question=item.question, response=text.strip(), answer=item.gold)
        return judge.decide(prompt, parse_true_false)


register(Frames())
