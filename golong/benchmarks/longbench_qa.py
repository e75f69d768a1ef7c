"""LongBench (V1) QA: 2WikiMultihopQA, HotpotQA, MuSiQue, NarrativeQA, Qasper (Bai et al., 2024;
THUDM/LongBench: `config/dataset2prompt.json`, `pred.py`, `metrics.py`, `eval.py`).

Release: one JSONL file per dataset (`2wikimqa.jsonl`, `hotpotqa.jsonl`, `musique.jsonl`,
`narrativeqa.jsonl`, `qasper.jsonl` in data.zip, or the `_e` variants), rows
`{input, context, answers: [...], length, dataset, language, all_classes, _id}`.

Prompt: the dataset's template from dataset2prompt.json, filled with `context` and `input`. A prompt over
the budget keeps int(budget/2) tokens from its front and as many from its end (pred.py).

Metric: `qa_f1_score` (metrics.py) of the response against each gold answer, the best one counting
(eval.py's scorer), with `normalize_answer`: lowercase, punctuation removed, the articles a/an/the
removed, whitespace collapsed. A dataset's score is 100 x the mean over its rows; the reported LBV1-QA
number is the mean of the five datasets' scores (each dataset weighs the same, however many rows it has).
"""
from __future__ import annotations

import os
import re
import string
from collections import Counter

from golong.benchmarks.base import OK, Benchmark, BenchItem, Score, register, row_id, text_field
from golong.data.schema import DataError

_MULTIHOP = ("Answer the question based on the given passages. Only give me the answer and do not output any "
             "other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the "
             "given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\n"
             "Answer:")
# dataset2prompt.json, verbatim (NarrativeQA's "asconcisely" is the release's spelling).
PROMPTS = {
    "narrativeqa": ("You are given a story, which can be either a novel or a movie script, and a question. Answer "
                    "the question asconcisely as you can, using a single phrase if possible. Do not provide any "
                    "explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely "
                    "as you can, using a single phrase if possible. Do not provide any explanation.\n\n"
                    "Question: {input}\n\nAnswer:"),
    "qasper": ("You are given a scientific article and a question. Answer the question as concisely as you can, "
               "using a single phrase or sentence if possible. If the question cannot be answered based on the "
               "information in the article, write \"unanswerable\". If the question is a yes/no question, answer "
               "\"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n "
               "Answer the question based on the above article as concisely as you can, using a single phrase or "
               "sentence if possible. If the question cannot be answered based on the information in the article, "
               "write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or "
               "\"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"),
    "hotpotqa": _MULTIHOP,
    "2wikimqa": _MULTIHOP,
    "musique": _MULTIHOP,
}
DATASETS = tuple(PROMPTS)


def normalize_answer(s: str) -> str:
    """metrics.py: lower, remove punctuation, remove articles, fix whitespace (in that order of application)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: list[str], ground_truth: list[str]) -> float:
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def _dataset(row: dict, file: str, row_no: int) -> str:
    name = row.get("dataset")
    if not isinstance(name, str):  # the release's rows carry it; else the file name says (hotpotqa_e.jsonl)
        name = os.path.splitext(os.path.basename(file))[0]
    name = name.removesuffix("_e")
    if name not in PROMPTS:
        raise DataError(file, row_no, "dataset", f"{name!r} is not one of the QA datasets {', '.join(DATASETS)} "
                        "(name the file after its dataset, e.g. hotpotqa.jsonl)")
    return name


class LongBenchQA(Benchmark):
    name = "longbench_qa"
    column = "LBV1-QA"
    truncation_equal_halves = True  # V1 pred.py: half = int(max_length/2) on each side

    def detect(self, row: dict) -> bool:
        return "input" in row and "answers" in row and "context" in row

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise DataError(file, row_no, "answers", "expected a non-empty list of strings")
        return BenchItem(
            benchmark=self.name, id=row_id(row, "_id", file, row_no), question=text_field(row, "input", file, row_no),
            context=text_field(row, "context", file, row_no, required=False), gold=list(answers),
            groups={"dataset": _dataset(row, file, row_no)}, file=file, row=row_no)

    def messages(self, item: BenchItem) -> list[dict]:
        template = PROMPTS[item.groups["dataset"]]
        return [{"role": "user", "content": template.format(context=item.context, input=item.question)}]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        text = text.strip()
        return Score(max(qa_f1_score(text, gold) for gold in item.gold), OK, extracted=text[:300])

    def headline(self, rows):
        """Mean of the datasets' scores (module docstring)."""
        per_dataset: dict[str, list[float]] = {}
        for item, scores in rows:
            if scores:
                per_dataset.setdefault(item.groups["dataset"], []).append(sum(scores) / len(scores))
        if not per_dataset:
            return None
        return sum(100.0 * sum(v) / len(v) for v in per_dataset.values()) / len(per_dataset)


register(LongBenchQA())
