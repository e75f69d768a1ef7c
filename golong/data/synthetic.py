"""A synthetic multi-task long-context dataset for the CPU demo, built for learnability.

The demo trains a tiny randomly initialised model with RL for a few minutes. RL learns only from
groups whose G rewards differ, so the data is designed so that a random policy already earns
some reward some of the time, and the reward can keep climbing as the policy improves:

- A small world: 8 animals and 8 colours. Each context states 3 to 6 facts "The fox is blue."
  among filler sentences from a small vocabulary, 4 to 32 of them (50 to 400 tokens for a tokenizer
  with whole-word tokens). Train the demo tokenizer on `demo_corpus()` so that every answer word is
  one token: the answer vocabulary is then a sizeable share of what a random policy emits.
- Five of the nine task types, each with its own reward (paper Table 1):
    T1 needle retrieval, em:            "What colour is the fox?"        -> "blue"
    T2 multiple choice, accuracy:       the same with options A-D        -> "C"
    T3 list retrieval, f1:              "Which animals are blue?"        -> "fox owl" (token F1)
    T6 colour mentions, subem:          "Which colours are mentioned?"   -> 2 or 3 colours
    T8 ordering, pairwise:              "List the animals in order."     -> ["owl", "fox", "cat"]
  Partial-credit rewards (f1, subem, pairwise) pay for any right word or pair, exact ones (em,
  accuracy) pay 1/8 and 1/4 to a policy that only learned the answer format, and full marks need
  the context: a rising reward curve with headroom. Random answers of 1-4 demo words earn 0.04 on
  average, with unequal rewards in a third of the groups (tests/test_data_synthetic.py).
- No filler word is an animal or a colour, so every question has exactly the gold answer.
- Every instruction asks for `[Answer]` followed by the answer (appendix B formats).
"""
from __future__ import annotations

import json
import os
import random

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
LETTERS = "ABCD"
_SUBJECTS = ["the river", "a farmer", "the old mill", "the wind", "a small boat", "the market", "the village", "a child"]
_VERBS = ["runs past", "waits near", "looks at", "walks to", "sings about", "stays by", "turns toward", "sleeps under"]
_OBJECTS = ["the bridge", "the hill", "a stone wall", "the long road", "the open field", "the tall tree", "the lake", "a wooden gate"]
_TIMES = ["in the morning", "at noon", "after the rain", "before dark", "every day", "in spring", "at night", "once more"]
TASK_WEIGHTS = {"T1": 0.25, "T2": 0.2, "T3": 0.2, "T6": 0.15, "T8": 0.2}


def _filler(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}."


def _context(rng: random.Random, facts: list[tuple[str, str]], num_filler: int) -> str:
    """`num_filler` filler sentences (about 10 tokens each) with the facts at random places, in order."""
    sentences = [_filler(rng) for _ in range(num_filler)]
    slots = sorted(rng.choices(range(len(sentences) + 1), k=len(facts)))
    for offset, (slot, (animal, colour)) in enumerate(zip(slots, facts)):
        sentences.insert(slot + offset, f"The {animal} is {colour}.")
    return " ".join(sentences)


def make_row(rng: random.Random, task: str, index: int) -> dict:
    """One native row of the demo task `task`."""
    num_facts = 3 if task == "T8" else rng.randint(3, 6)
    animals = rng.sample(ANIMALS, num_facts)
    colours = [rng.choice(COLOURS) for _ in animals]
    facts = list(zip(animals, colours))
    context = _context(rng, facts, rng.randint(4, 32))  # 50 to 400 tokens
    if task in ("T1", "T2"):
        animal, colour = rng.choice(facts)
        question = f"What colour is the {animal}?"
        answer: str | list[str] = colour
        if task == "T2":
            options = rng.sample([c for c in COLOURS if c != colour], 3) + [colour]
            rng.shuffle(options)
            question += "\n" + "\n".join(f"{letter}. {c}" for letter, c in zip(LETTERS, options))
            answer = LETTERS[options.index(colour)]
    elif task == "T3":
        colour = rng.choice(colours)
        question = f"Which animals are {colour}?"
        answer = " ".join(a for a, c in facts if c == colour)  # a string: scored by token F1
    elif task == "T6":
        question = "Which colours are mentioned in the text?"
        answer = sorted(set(colours), key=colours.index)
    elif task == "T8":
        question = "List the animals in the order they appear in the text."
        answer = animals
    else:
        raise ValueError(f"the demo has no task {task}; it has {', '.join(TASK_WEIGHTS)}")
    return {"id": f"demo-{index}", "task": task, "context": context, "question": question,
            "answer": answer, "source": "golong-demo"}


def demo_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tasks = rng.choices(list(TASK_WEIGHTS), weights=list(TASK_WEIGHTS.values()), k=n)
    return [make_row(rng, task, i) for i, task in enumerate(tasks)]


def make_demo_dataset(path: str, n: int, seed: int) -> str:
    """Write `n` demo rows (native JSONL) to `path` and return it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in demo_rows(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


def demo_corpus() -> list[str]:
    """Text for the demo tokenizer: demo prompts and answers in the formats the instructions ask
    for, so that every demo word, `[Answer]` and the instructions' words are single tokens."""
    from golong.data.instructions import OUTPUT_FORMATS
    from golong.rewards import TASK_TO_REWARD

    texts = []
    for row in demo_rows(400, seed=12345):
        answer = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        texts += [row["context"], row["question"], OUTPUT_FORMATS[TASK_TO_REWARD[row["task"]]],
                  "[Answer] " + " ".join(answer), "[Answer]\n" + "\n".join(answer)]
    return texts
