"""OpenAI MRCR, multi-round co-reference resolution (Vodrahalli et al., 2024; the Hugging Face dataset
openai/mrcr and its README's grading code).

Release: parquet files (`2needle.parquet`, `4needle.parquet`, `8needle.parquet`, or their shards), rows
`{prompt, answer, random_string_to_prepend, n_needles, desired_msg_index, total_messages, n_chars}` with
`prompt` a JSON string of the chat messages; JSONL exports of the same rows load too.

Prompt: the released conversation, sent as it is (its own user/assistant turns). MRCR is not truncated: a
conversation cut in the middle loses the needles it asks about, so a row longer than the budget is
skipped and counted (the release's table reports each length bin the model's window covers).

Metric, the README's `grade`:

    if not response.startswith(random_string_to_prepend): return 0
    response = response.removeprefix(random_string_to_prepend)
    answer = answer.removeprefix(random_string_to_prepend)
    return SequenceMatcher(None, response, answer).ratio()

on the response after its reasoning block, with the whitespace the chat template leaves after `</think>`
stripped from its front (a thinking model's answer starts there; the README graded non-thinking output).
Rows are reported per length bin of the release's table, by the prompt's tokens under the evaluated
model's tokenizer (the release counts o200k tokens; a tokenizer of the model is what the budget uses):
(4K, 8K], (8K, 16K], ... (512K, 1M]; shorter rows fall in "<=4K".
"""
from __future__ import annotations

import json
from difflib import SequenceMatcher

from golong.benchmarks.base import NO_ANSWER, OK, Benchmark, BenchItem, Score, register, row_id, text_field
from golong.data.schema import DataError

BIN_EDGES = [4096 * 2 ** k for k in range(9)]  # 4K, 8K, ..., 1M tokens


def _k(tokens: int) -> str:
    return f"{tokens // 1048576}M" if tokens >= 1048576 else f"{tokens // 1024}K"


def length_bin(tokens: int) -> str:
    """The release's bin of a prompt of `tokens` tokens: "(lo, hi]" in K/M units, "<=4K" or ">1M"."""
    if tokens <= BIN_EDGES[0]:
        return "<=4K"
    for lo, hi in zip(BIN_EDGES, BIN_EDGES[1:]):
        if tokens <= hi:
            return f"{_k(lo)}-{_k(hi)}"
    return ">1M"


def grade(response: str, answer: str, random_string_to_prepend: str) -> float:
    """The README's grading function, verbatim in behaviour."""
    if not response.startswith(random_string_to_prepend):
        return 0.0
    response = response.removeprefix(random_string_to_prepend)
    answer = answer.removeprefix(random_string_to_prepend)
    return float(SequenceMatcher(None, response, answer).ratio())


class MRCR(Benchmark):
    name = "mrcr"
    column = "MRCR"
    truncation = "skip"

    def detect(self, row: dict) -> bool:
        return "random_string_to_prepend" in row and "prompt" in row

    def parse(self, row: dict, file: str, row_no: int) -> BenchItem:
        raw = row.get("prompt")
        try:
            messages = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError as e:
            raise DataError(file, row_no, "prompt", f"not a JSON list of messages: {e.msg}") from None
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages)):
            raise DataError(file, row_no, "prompt", "expected a JSON list of {role, content} messages")
        prefix = text_field(row, "random_string_to_prepend", file, row_no)
        users = [m["content"] for m in messages if m["role"] == "user"]
        return BenchItem(
            benchmark=self.name, id=row_id(row, "id", file, row_no), question=users[-1] if users else "",
            context="\n\n".join(m["content"] for m in messages[:-1]),
            gold={"answer": text_field(row, "answer", file, row_no), "prefix": prefix},
            groups={"needles": str(row.get("n_needles", "?"))}, file=file, row=row_no,
            extra={"messages": [{"role": m["role"], "content": m["content"]} for m in messages]})

    def messages(self, item: BenchItem) -> list[dict]:
        return item.extra["messages"]

    def score_answer(self, item: BenchItem, text: str, judge) -> Score:
        text = text.lstrip()
        gold = item.gold
        if not text.startswith(gold["prefix"]):
            return Score(0.0, NO_ANSWER)  # the required prefix is missing: 0, as grade() says
        return Score(grade(text, gold["answer"], gold["prefix"]), OK)

    def breakdown(self, item: BenchItem, prompt_tokens: int) -> dict[str, str]:
        return {**item.groups, "length_bin": length_bin(prompt_tokens)}


register(MRCR())
