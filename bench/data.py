"""Data-path throughput and memory: loading, prompt encoding, the held prompt ids, decontamination.

    OMP_NUM_THREADS=1 .venv/bin/python bench/data.py [--rows 1000] [--context-words 2000] [--seed 0]

A synthetic native JSONL file of `--rows` rows (contexts of about `--context-words` words, CJK in
every fourth row) and the tiny model's byte-level tokenizer. Prints, each against a baseline in the
same run:
- load_examples rows/s;
- encode_prompts tokens/s against one apply_chat_template(tokenize=True) call per row (what a
  straightforward loader does);
- bytes per token held by PromptIds against the same ids as list[list[int]] (sys.getsizeof of the
  lists and their int objects);
- 13-gram decontamination rows/s of a 20,000-row training file against 5,000 benchmark questions.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

from golong.data.config import DataConfig
from golong.data.decontaminate import decontaminate
from golong.data.loader import load_examples
from golong.data.prompts import encode_prompts
from golong.tiny_model import build_tiny_model

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more about up out who "
         "revenue table part section clause record model field version river mill harbour").split()
CJK = "长上下文强化学习文档问题答案模型训练数据任务奖励评估检索推理总结表格数值"


def text(rng: random.Random, words: int, cjk: bool) -> str:
    if cjk:
        return "".join(rng.choice(CJK) for _ in range(words))
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_rows(path: str, rows: int, context_words: int, rng: random.Random) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {"id": i, "task": f"T{1 + i % 9}", "context": text(rng, context_words, i % 4 == 3),
                   "question": text(rng, 20, False), "answer": ["a", "b"] if i % 9 in (2, 5, 6, 7) else "a"}
            if i % 9 == 4:
                row["answer"] = {"columns": ["a"], "data": [["1"]]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def list_bytes(prompts: list[list[int]]) -> int:
    """Python-object memory of a list of lists of ints (small ints are shared and not counted)."""
    total = sys.getsizeof(prompts)
    for p in prompts:
        total += sys.getsizeof(p) + sum(sys.getsizeof(t) for t in p if not -5 <= t <= 256)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--context-words", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(os.path.join(tmp, "model")))
        path = os.path.join(tmp, "train.jsonl")
        write_rows(path, args.rows, args.context_words, rng)
        cfg = DataConfig()

        data, seconds = timed(lambda: load_examples([path], cfg))
        examples = data.examples
        print(f"load_examples: {len(examples)} rows in {seconds:.2f} s = {len(examples) / seconds:,.0f} rows/s "
              f"({os.path.getsize(path) / 2**20 / seconds:.0f} MiB/s)")

        prompts, seconds = timed(lambda: encode_prompts(examples, tokenizer, cfg))
        tokens = int(prompts.lengths.sum())
        baseline_n = max(1, len(examples) // 4)  # the baseline on a quarter of the rows, scaled
        baseline, base_seconds = timed(lambda: [
            tokenizer.apply_chat_template(e.messages, add_generation_prompt=True, tokenize=True)["input_ids"]
            for e in examples[:baseline_n]])
        assert baseline == [prompts[i] for i in range(baseline_n)]
        base_rate = sum(map(len, baseline)) / base_seconds
        print(f"encode_prompts: {tokens:,} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tokens/s; "
              f"per-row apply_chat_template: {base_rate:,.0f} tokens/s; ratio {tokens / seconds / base_rate:.2f}x")

        as_lists = [prompts[i] for i in range(len(prompts))]
        held = prompts.flat.nbytes + prompts.offsets.nbytes
        lists = list_bytes(as_lists)
        print(f"prompt ids held: PromptIds {held / tokens:.2f} B/token ({held / 2**20:.1f} MiB), "
              f"list[list[int]] {lists / tokens:.2f} B/token ({lists / 2**20:.1f} MiB); {lists / held:.1f}x smaller")

        train, bench = os.path.join(tmp, "dc_train.jsonl"), os.path.join(tmp, "dc_bench.jsonl")
        with open(bench, "w") as f:
            for _ in range(5000):
                f.write(json.dumps({"question": text(rng, 40, rng.random() < 0.25)}, ensure_ascii=False) + "\n")
        with open(train, "w") as f:
            for i in range(20000):
                f.write(json.dumps({"id": i, "question": text(rng, 40, i % 4 == 3)}, ensure_ascii=False) + "\n")
        result, seconds = timed(lambda: decontaminate(train, [bench], os.path.join(tmp, "dc_out.jsonl"), n=13))
        print(f"decontaminate (13-gram, 20,000 train x 5,000 bench questions of 40 tokens): {seconds:.2f} s = "
              f"{20000 / seconds:,.0f} train rows/s; {result.dropped_rows} dropped")


if __name__ == "__main__":
    main()
