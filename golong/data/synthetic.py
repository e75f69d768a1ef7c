"""A synthetic multi-task dataset for the CPU demo, built so that a 2-layer model learns it from its
context within minutes.

The demo mirrors the paper's setting at toy scale: RL starts from a model that already follows the
answer format and answers some questions right (a short supervised warm-up, golong/demo.py), and
improves it on tasks whose answers are in the context.

- Documents: one fixed skeleton of four facts, every slot at the same token position in every document
  (the demo tokenizer makes every word one token; 20 tokens):
      "The colour is red. The animal is fox. The city is rome. The food is rice."
  The slots take one-token values from small disjoint sets (`SLOTS`), so each question has exactly
  one right answer, the one word of the asked kind, at a fixed place. With tied embeddings the 2-layer
  model learns to copy it in a few hundred supervised steps; filler sentences between the facts, or
  untied embeddings, kept it near chance for 400 steps (bench/RESULTS.md).
- Every document is asked four questions, one per task type, each with its own reward (paper Table 1):
    T1 retrieval, em:                  "What is the colour?"                 -> "red"
    T2 multiple choice, accuracy:      "What is the animal?" A. cat .. D. owl -> "C"   (options in a fixed order)
    T3 list retrieval, f1:             "What are the city and the food?"     -> ["rome", "rice"] (set F1)
    T6 mention, subem:                 "Which city is named?"                -> ["rome"]
  Each question's instruction names what to output ("... then output the colour, ..."). A policy
  that only learned the answer format earns 1/6 (1/4 on T2); full marks need the context. Listing
  candidates pays no more than a guess: em and accuracy score 0, subem divides by the answer's
  length, f1 loses precision (tests/test_data_synthetic.py), and responses are capped at 12 tokens.
- Splits are by document (`demo_splits`): the 864 value combinations are dealt to held-out, warm-up
  and training documents once, so a held-out document's facts never appear in the warm-up or in training.
- Every instruction asks for `[Answer]` followed by the answer (appendix B formats); `answer_text`
  writes a gold answer that way (what the warm-up trains on).
"""
from __future__ import annotations

import itertools
import json
import os
import random

SLOTS: dict[str, list[str]] = {  # slot -> its values, in the order the facts appear in a document
    "colour": ["red", "green", "blue", "yellow", "black", "white"],
    "animal": ["cat", "dog", "fox", "owl"],  # T2's options A-D, always in this order
    "city": ["paris", "rome", "oslo", "lima", "cairo", "delhi"],
    "food": ["bread", "rice", "soup", "cake", "fish", "corn"],
}
LETTERS = "ABCD"
TASKS = ("T1", "T2", "T3", "T6")
SPLIT_SEED = 0


def context_of(values: dict[str, str]) -> str:
    """The document stating `values` (slot -> value) in the fixed skeleton."""
    return " ".join(f"The {slot} is {values[slot]}." for slot in SLOTS)


def _question(task: str, values: dict[str, str]) -> tuple[str, str | list[str], str]:
    """The question of task `task` about a document stating `values`, its gold answer, and what the
    instruction asks to output (appendix B's wording with the asked slot named)."""
    if task == "T1":
        return "What is the colour?", values["colour"], "the colour"
    if task == "T2":
        options = "\n".join(f"{letter}. {animal}" for letter, animal in zip(LETTERS, SLOTS["animal"]))
        return (f"What is the animal?\n{options}", LETTERS[SLOTS["animal"].index(values["animal"])],
                "the option letter (A/B/C/D) of the animal")
    if task == "T3":  # list F1 over the answer's lines
        return "What are the city and the food?", [values["city"], values["food"]], "the city and the food line by line"
    if task == "T6":
        return "Which city is named?", [values["city"]], "the city"
    raise ValueError(f"the demo has no task {task}; it has {', '.join(TASKS)}")


def instruction(output: str) -> str:
    """Appendix B's output format (the `em` one: "... then output the answer, ...") with `output` in
    place of "the answer": naming the asked slot near the end of the prompt."""
    from golong.data.instructions import OUTPUT_FORMATS

    return OUTPUT_FORMATS["em"].replace("the answer", output)


def document_rows(values: dict[str, str], doc: int) -> list[dict]:
    """The rows (one per task, ids `demo-<doc>-<task>`) of the document stating `values`."""
    context = context_of(values)
    rows = []
    for task in TASKS:
        question, answer, output = _question(task, values)
        rows.append({"id": f"demo-{doc}-{task}", "task": task, "context": context, "question": question,
                     "answer": answer, "instruction": instruction(output), "source": "golong-demo"})
    return rows


def all_documents() -> list[dict[str, str]]:
    """Every value combination (6 x 4 x 6 x 6 = 864), in a fixed order."""
    return [dict(zip(SLOTS, combo)) for combo in itertools.product(*SLOTS.values())]


def demo_splits(train_docs: int, eval_docs: int, warmup_docs: int, seed: int = SPLIT_SEED) -> dict[str, list[dict]]:
    """The demo's three splits by document: the value combinations are shuffled once and dealt to
    `eval` (held-out), `warmup` (the supervised warm-up) and `train` (RL), in that order, so no two
    splits share a document's facts. Rows of a split are in document order, four per document."""
    docs = all_documents()
    if eval_docs + warmup_docs + train_docs > len(docs):
        raise ValueError(f"the demo world has {len(docs)} documents; asked for {eval_docs} held-out + "
                         f"{warmup_docs} warm-up + {train_docs} training ones")
    rng = random.Random(seed)
    rng.shuffle(docs)
    splits, start = {}, 0
    for name, count in (("eval", eval_docs), ("warmup", warmup_docs), ("train", train_docs)):
        splits[name] = [row for i, values in enumerate(docs[start:start + count], start=start)
                        for row in document_rows(values, i)]
        start += count
    return splits


def write_rows(path: str, rows: list[dict]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def answer_text(answer: str | list[str]) -> str:
    """A gold answer written as the instructions ask: `[Answer]`, then the answer (list items line by
    line). Each line starts with a space, so that an answer word is the same token as in the context
    ("The colour is red." has "▁red"; "red" alone on a line would be another token): copying from the
    context is then one step, not two. The rewards strip the space."""
    return "[Answer]\n" + "\n".join(" " + item for item in (answer if isinstance(answer, list) else [answer]))


def demo_corpus() -> list[str]:
    """Text for the demo tokenizer (`TinyModelSpec(byte_level=False)`): demo prompts and answers, and
    the answer words repeated so that BPE merges them first. In the 208-token vocabulary it gives,
    every demo word, `[Answer]`'s parts and the instructions' words are single tokens, and an answer
    word is the same token in the context and in an answer."""
    rng = random.Random(12345)
    texts = []
    for doc, values in enumerate(rng.sample(all_documents(), 100)):
        for row in document_rows(values, doc):
            texts += [row["context"], row["question"], row["instruction"], answer_text(row["answer"])]
    words = [*(v for values in SLOTS.values() for v in values), *LETTERS]
    return texts + [" ".join(words + ["[Answer]"]), answer_text(words)] * 3000
