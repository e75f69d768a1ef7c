"""Reward parity: golong's rewards against the GoLongRL reference scorer, on one corpus of responses.

The corpus (built below, deterministic; `--write-corpus` saves it as JSON lines) holds several hundred
responses to released-format records (verl rows: `data_source`, `reward_model.ground_truth`,
`extra_info.reward_mode`) over the nine reward types: right and wrong answers in appendix B's formats,
their usual variants (spellings of an option, punctuation, blank lines, enumerations, partial lists),
the four scoring bugs of issue 15 with their neighbours, and hostile outputs. Every case carries the
score golong must give, worked out by hand (ROUGE-L: by the rouge-score package), so the script checks
golong on its own:

    PYTHONPATH=. .venv/bin/python bench/reward_parity.py

With the reference scorer's files (the GoLongRL authors' verl fork: `Train/verl/verl/utils/reward_score/`
of the xiaoxuanNLP/GoLongRL repository on GitHub, read at commit c34dba3; its imports need jieba, rouge
and pytrec_eval, e.g. `pip install --target DIR jieba rouge pytrec-eval-terrier`, kept out of the venv):

    PYTHONPATH=. .venv/bin/python bench/reward_parity.py --reference PATH/reward_score --reference-deps DIR

it also scores every case with the reference's `default_compute_score` (nothing of it is copied here:
it is imported from PATH at run time), prints the agreement per reward type, and classifies every
disagreement by the first rule of `KNOWN_DIFFERENCES` that explains it: "golong fixes a reference bug"
or "documented golong choice"; a disagreement no rule explains is "unexplained". The rules look at the
case's input (response, gold) and the direction of the difference, never at case ids. golong runs with
`require_think_close=True`, the reference's rule for thinking models. Exit status 1 when golong misses
an expected score or a disagreement is unexplained.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import time
import types
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from golong.rewards import REWARD_TYPES, compute_score, route_released
from golong.rewards.extract import answer_area, normalize, reasoning_removed
from golong.rewards.table import parse_table, reorder

FIXES_BUG = "golong fixes a reference bug"
CHOICE = "documented golong choice"
UNEXPLAINED = "unexplained"
TOLERANCE = 1e-6  # the `rouge` package adds 1e-8 to its F-measure denominators

# ----------------------------------------------------------------------------------------------
# Records and responses


def record(data_source: str, reward_mode: str | None = None, **truth) -> dict:
    return {"data_source": data_source, "reward_model": {"ground_truth": truth},
            "extra_info": {"reward_mode": reward_mode, "question": "..."}}


def lbp(mode: str, items: list[str], language: str = "English") -> dict:
    return record("longbench_pro", mode, doc_ids=items, summary=language, golden_label="")


REASONING = [
    "The question asks for one value from the report. Section 3 gives the figures for each quarter, and "
    "the appendix repeats them with a correction, so I should use the corrected table.",
    "Let me re-read the relevant passages. The contract was amended twice; the second amendment moved the "
    "deadline. Checking the clause numbering again to be sure the reference is right.",
    "我先找到相关段落。第二部分给出了数据，附录里有更正，所以以附录为准。",
]


def think(i: int = 0, answer: str = "") -> str:
    """A reasoning block, then `answer` (the text the rewards score)."""
    return f"<think>\n{REASONING[i % len(REASONING)]}\n</think>\n\n{answer}"


@dataclass(frozen=True)
class Case:
    id: str
    reward: str  # the golong reward type the record routes to
    record: dict
    response: str
    expected: float  # golong's score, by hand


class Corpus:
    def __init__(self):
        self.cases: list[Case] = []

    def add(self, reward: str, name: str, rec: dict, response: str, expected: float) -> None:
        self.cases.append(Case(f"{reward}/{len(self.cases):03d}-{name}", reward, rec, response, float(expected)))


# ----------------------------------------------------------------------------------------------
# The corpus, one builder per reward type

ENTITIES = ["Paris", "Project Falcon 12", "Dr. Amelia Hart", "2019-03-14", "Clause 7.2", "R1023", "北京",
            "the blue folder", "USD 4.5 million", "Kestrel Ltd.", "42", "Section IV(b)"]


def em_cases(c: Corpus) -> None:
    for i, gold in enumerate(ENTITIES):
        rec = record("EM", "em", golden_label=gold)
        c.add("em", "bare", rec, think(i, gold), 1.0)
        c.add("em", "marker", rec, think(i, f"[Answer]\n{gold}"), 1.0)
        c.add("em", "case-space", rec, think(i, f"[Answer]\n  {gold.upper()}  "), 1.0)
        c.add("em", "wrong", rec, think(i, f"[Answer]\n{ENTITIES[(i + 1) % len(ENTITIES)]}"), 0.0)
        c.add("em", "bare-wrong", rec, think(i, ENTITIES[(i + 3) % len(ENTITIES)]), 0.0)
        c.add("em", "with-words", rec, think(i, f"[Answer]\nThe answer is {gold}."), 0.0)
    rec = record("EM", "em", golden_label="Paris")
    c.add("em", "in-reasoning-only", rec, "<think>[Answer] Paris</think>\n[Answer] Lyon", 0.0)
    c.add("em", "no-think-close", rec, "[Answer]\nParis", 0.0)
    c.add("em", "unclosed-think", rec, "<think>hmm [Answer] Paris", 0.0)
    c.add("em", "two-thinks", rec, "<think>a</think>b</think>\n[Answer]\nParis", 1.0)
    c.add("em", "fullwidth", rec, think(0, "[Answer]\nＰａｒｉｓ"), 1.0)
    c.add("em", "two-markers", rec, think(0, "[Answer] Lyon\n[Answer] Paris"), 1.0)
    c.add("em", "bold-marker", rec, think(0, "**[Answer]**: Paris"), 1.0)
    c.add("em", "empty", rec, think(0, ""), 0.0)
    c.add("em", "repetition", rec, think(0, "[Answer]\n" + "Paris " * 5000), 0.0)


def selection_cases(c: Corpus) -> None:
    letters = "ABCD"
    for i, gold in enumerate(letters * 3):
        rec = record("selection", "selection", golden_label=f"The correct answer is ({gold})")
        other = letters[(letters.index(gold) + 1) % 4]
        c.add("accuracy", "phrase", rec, think(i, f"The correct answer is ({gold})"), 1.0)
        c.add("accuracy", "phrase-bare", rec, think(i, f"Option {other} is contradicted by part 2.\nThe correct answer is {gold}."), 1.0)
        c.add("accuracy", "phrase-bold", rec, think(i, f"**The correct answer is ({gold})**"), 1.0)
        c.add("accuracy", "phrase-wrong", rec, think(i, f"The correct answer is ({other})"), 0.0)
        c.add("accuracy", "marker-letter", rec, think(i, f"[Answer]\n{gold}"), 1.0)
        c.add("accuracy", "marker-paren", rec, think(i, f"[Answer]\n({gold})"), 1.0)
        c.add("accuracy", "marker-text", rec, think(i, f"[Answer]\n{gold}. The amended deadline"), 1.0)
        c.add("accuracy", "hedge-or", rec, think(i, f"The correct answer is ({gold}) or ({other})"), 0.0)
        c.add("accuracy", "hedge-comma", rec, think(i, f"The correct answer is ({gold}), but ({other}) also fits."), 0.0)
        c.add("accuracy", "two-verdicts", rec, think(i, f"The correct answer is ({gold}). No, the correct answer is ({other})"), 0.0)
        c.add("accuracy", "two-verdicts-wrong-first", rec, think(i, f"The correct answer is ({other}). No, the correct answer is ({gold})"), 0.0)
        c.add("accuracy", "marker-hedge", rec, think(i, f"[Answer]\n{gold} or {other}"), 0.0)
        c.add("accuracy", "all-letters", rec, think(i, "[Answer]\nABCD"), 0.0)
    rec = record("selection", "selection", golden_label="The correct answer is (E)")
    c.add("accuracy", "letter-E", rec, think(0, "The correct answer is (E)"), 1.0)
    c.add("accuracy", "letter-E-marker", rec, think(0, "[Answer]\nE"), 1.0)
    rec = record("selection", "selection", golden_label="The correct answer is (B)")
    c.add("accuracy", "greedy-word", rec, think(0, "The correct answer is Definitely (B)"), 0.0)
    c.add("accuracy", "lowercase-phrase", rec, think(0, "the correct answer is (B)"), 1.0)
    c.add("accuracy", "colon-phrase", rec, think(0, "The correct answer is: (B)"), 1.0)
    c.add("accuracy", "in-reasoning-only", rec, "<think>The correct answer is (B)</think>\nI am not sure.", 0.0)
    c.add("accuracy", "no-think-close", rec, "The correct answer is (B)", 0.0)
    c.add("accuracy", "repeated-phrase", rec, think(0, "The correct answer is (A). " * 2000), 0.0)
    c.add("accuracy", "option-list-then-verdict", rec, think(0, "A. first\nB. second\nThe correct answer is (B)"), 1.0)
    c.add("accuracy", "verdict-then-reason", rec, think(0, "The correct answer is (B). A careful reading of part D confirms it."), 1.0)
    # LongBench-Pro Accuracy rows: option-letter golds and free-text golds (issue 15, bug 1)
    for mode in ("T3.1 Multi-Doc Integration QA", "T3.2 Single-Hop Fact QA",
                 "T11.1 Long-Range Entity & Commitment Tracking", "T11.2 Short-Range Reference Resolution & State Query"):
        rec = lbp(mode, ["C"])
        for spelling in ("C", "c"):
            c.add("accuracy", "lbp-letter", rec, think(0, f"[Answer]\n{spelling}"), 1.0)
        for spelling in ("(C)", "C.", "C. The second contract", "C) text", "**C**", "Ｃ"):
            c.add("accuracy", "lbp-letter-spelling", rec, think(0, f"[Answer]\n{spelling}"), 1.0)
        for spelling in ("B", "C or D", "(C) or (D)", "C) Paris or D) Rome", "C\nD", "A B C D"):
            c.add("accuracy", "lbp-letter-wrong", rec, think(0, f"[Answer]\n{spelling}"), 0.0)
    for gold, right, wrongs in [("E. coli", "E. coli", ["E. faecalis", "E", "(E)"]),
                                ("J. Smith", "j.  smith", ["J", "J. Smithson"]),
                                ("(B) The second contract", "(B) the second contract", ["B", "(B)", "B. The first contract"]),
                                ("the blue folder", "The Blue Folder", ["the red folder", "blue folder"])]:
        rec = lbp("T3.2 Single-Hop Fact QA", [gold])
        c.add("accuracy", "free-text-right", rec, think(1, f"[Answer]\n{right}\nbecause part 4 says so"), 1.0)
        for wrong in wrongs:
            c.add("accuracy", "free-text-wrong", rec, think(1, f"[Answer]\n{wrong}"), 0.0)


PARTS = [f"Part {i}" for i in (1, 3, 4, 7, 12, 15, 21)]


def f1_cases(c: Corpus) -> None:
    modes = ["T5.1 Full-Sentence Citation Alignment", "T6.2 Targeted Subset Cluster Identification",
             "T7.1 Global Conflict & Inconsistency Localization", "T9.2 Localized Interface Change Detection"]
    golds = [PARTS[:3], ["A22V1MD93T2FW9", "ACJT8MUCOLRF0", "A38NELQT98S4H8"], ["A1 B2", "A2 B3"],
             ["Lesson Model: key", "Lesson Model: seq length"]]
    for mode, gold in zip(modes, golds):
        rec = lbp(mode, gold)
        n = len(gold)
        c.add("f1", "exact", rec, think(0, "[Answer]\n" + "\n".join(gold)), 1.0)
        c.add("f1", "reversed", rec, think(0, "[Answer]\n" + "\n".join(reversed(gold))), 1.0)
        c.add("f1", "upper", rec, think(0, "[Answer]\n" + "\n".join(g.upper() for g in gold)), 1.0)
        c.add("f1", "first-only", rec, think(0, f"[Answer]\n{gold[0]}"), 2 * (1 / n) / (1 + 1 / n))
        c.add("f1", "one-extra", rec, think(0, "[Answer]\n" + "\n".join(gold + ["Part 99"])), 2 * (n / (n + 1)) / (n / (n + 1) + 1))
        c.add("f1", "duplicate", rec, think(0, "[Answer]\n" + "\n".join(gold + [gold[0]])), 1.0)
        c.add("f1", "blank-lines", rec, think(0, "[Answer]\n" + "\n\n".join(gold)), 1.0)
        c.add("f1", "none-right", rec, think(0, "[Answer]\nPart 98\nPart 99"), 0.0)
        c.add("f1", "comma-line", rec, think(0, "[Answer]\n" + ", ".join(gold)), 0.0)
        c.add("f1", "no-marker", rec, think(0, "\n".join(gold)), 1.0)
    rec = lbp("T7.3 Comprehensive Error & Anomaly Sweep", ["beleive", "freind", "tomorow"])
    listing = "\n".join(["beleive", "freind", "tomorow"] + [f"word{i}" for i in range(17)])
    c.add("f1", "enumeration", rec, think(0, "[Answer]\n" + listing), 2 * (3 / 20) / (3 / 20 + 1))
    c.add("f1", "fullwidth", rec, think(0, "[Answer]\nｂｅｌｅｉｖｅ\nfreind\ntomorow"), 1.0)
    c.add("f1", "empty-answer", rec, think(0, "[Answer]\n"), 0.0)
    c.add("f1", "huge-list", rec, think(0, "[Answer]\n" + "beleive\n" * 100_000), 0.5)  # P = 1, R = 1/3
    c.add("f1", "in-reasoning-only", rec, "<think>[Answer]\nbeleive\nfreind\ntomorow</think>\nDone.", 0.0)


def math_cases(c: Corpus) -> None:
    rec = lambda g: record("math_longcot_math_verify", "math_verify", golden_label=g)
    for gold, right, wrong in [("\\frac{7}{18}", "\\boxed{\\frac{7}{18}}", "\\boxed{\\frac{1}{18}}"),
                               ("0.5", "\\boxed{\\frac{1}{2}}", "\\boxed{0.25}"),
                               ("1,000", "The total is 1000", "The total is 100"),
                               ("5.5%", "0.055", "0.55"),
                               ("42", "42", "24"),
                               ("3\\sqrt{2}", "$\\sqrt{18}$", "$\\sqrt{8}$"),
                               ("-3", "\\boxed{-3}", "\\boxed{3}"),
                               ("2^{10}", "1024", "1000"),
                               ("12.5", "\\boxed{12.50}", "\\boxed{12.05}")]:
        c.add("math_verify", "right", rec(gold), think(0, f"[Answer]\n{right}"), 1.0)
        c.add("math_verify", "right-no-marker", rec(gold), think(0, f"So the result is {right}"), 1.0)
        c.add("math_verify", "wrong", rec(gold), think(0, f"[Answer]\n{wrong}"), 0.0)
    c.add("math_verify", "bare-latex", rec("3\\sqrt{2}"), think(0, "[Answer]\n\\sqrt{18}"), 1.0)
    c.add("math_verify", "bare-frac", rec("0.5"), think(0, "[Answer]\n\\frac{1}{2}"), 1.0)
    # appendix B.6: several values line by line, text answers, identifiers
    c.add("math_verify", "lines-right", rec("5.5%\n-2.2%"), think(0, "[Answer]\n5.5%\n-2.2%"), 1.0)
    c.add("math_verify", "lines-half", rec("5.5%\n-2.2%"), think(0, "[Answer]\n5.5%\n-2.3%"), 0.5)
    c.add("math_verify", "lines-swapped", rec("5.5%\n-2.2%"), think(0, "[Answer]\n-2.2%\n5.5%"), 0.0)
    c.add("math_verify", "no-error", rec("No Error"), think(0, "[Answer]\nNo Error"), 1.0)
    c.add("math_verify", "no-error-case", rec("No Error"), think(0, "[Answer]\nno error"), 1.0)
    c.add("math_verify", "error-ids", rec("No Error"), think(0, "[Answer]\nR1023"), 0.0)
    c.add("math_verify", "id-not-number", rec("R1023"), think(0, "[Answer]\n1023"), 0.0)
    c.add("math_verify", "id-right", rec("R1023"), think(0, "[Answer]\nR1023"), 1.0)
    c.add("math_verify", "states", rec("state_1\nstate_2"), think(0, "[Answer]\nstate_1\nstate_2"), 1.0)
    c.add("math_verify", "in-reasoning-only", rec("42"), "<think>so it is \\boxed{42}</think>\nI could not decide.", 0.0)
    c.add("math_verify", "no-think-close", rec("42"), "[Answer]\n\\boxed{42}", 0.0)
    c.add("math_verify", "code-is-data", rec("0"), think(0, "[Answer] __import__('os').system('false')"), 0.0)
    c.add("math_verify", "exponent-tower", rec("9"), think(0, "[Answer]\n\\boxed{" + "9^{" * 30 + "9" + "}" * 30 + "}"), 0.0)
    c.add("math_verify", "huge-integer", rec("7"), think(0, "[Answer]\n" + "7" * 5000), 0.0)


TABLE = {"columns": ["city", "population"], "data": [["Berlin", 3645000], ["Hamburg", 1841000], ["Munich", 1472000]]}
EMPTY = '{"columns": [], "data": []}'


def iou_cases(c: Corpus) -> None:
    gold = json.dumps(TABLE)
    rec = record("multitableqa_pretraining", "iou", golden_label=gold)
    tagged = lambda obj, i=0: think(i, f"<answer>{obj if isinstance(obj, str) else json.dumps(obj)}</answer>")
    rows = TABLE["data"]
    c.add("iou", "exact", rec, tagged(TABLE), 1.0)
    c.add("iou", "fenced", rec, think(0, f"<answer>```json\n{json.dumps(TABLE)}\n```</answer>"), 1.0)
    c.add("iou", "two-rows", rec, tagged({"columns": TABLE["columns"], "data": rows[:2]}), 2 / 3)
    c.add("iou", "one-row", rec, tagged({"columns": TABLE["columns"], "data": rows[:1]}), 1 / 3)
    c.add("iou", "extra-row", rec, tagged({"columns": TABLE["columns"], "data": rows + [["Cologne", 1084000]]}), 3 / 4)
    c.add("iou", "wrong-row", rec, tagged({"columns": TABLE["columns"], "data": rows[:2] + [["Munich", 1471000]]}), 2 / 4)
    c.add("iou", "duplicate-row", rec, tagged({"columns": TABLE["columns"], "data": [rows[0], rows[0]]}), 1 / 4)
    c.add("iou", "string-numbers", rec, tagged({"columns": TABLE["columns"], "data": [[r[0], str(r[1])] for r in rows]}), 1.0)
    c.add("iou", "float-numbers", rec, tagged({"columns": TABLE["columns"], "data": [[r[0], float(r[1])] for r in rows]}), 1.0)
    c.add("iou", "lowercase", rec, tagged({"columns": TABLE["columns"], "data": [[r[0].lower(), r[1]] for r in rows]}), 1.0)
    c.add("iou", "column-order", rec, tagged({"columns": ["population", "city"], "data": [[r[1], r[0]] for r in rows]}), 1.0)
    c.add("iou", "dict-rows", rec, tagged({"columns": TABLE["columns"], "data": [dict(zip(TABLE["columns"], r)) for r in rows]}), 1.0)
    c.add("iou", "no-tags", rec, think(0, f"[Answer]\n{json.dumps(TABLE)}"), 1.0)
    c.add("iou", "data-only", rec, tagged({"data": rows}), 0.0)
    c.add("iou", "empty-table", rec, tagged(EMPTY), 0.0)
    c.add("iou", "malformed", rec, think(0, '<answer>{"columns": ["city"], "data": [["Berlin"]</answer>'), 0.0)
    c.add("iou", "not-json", rec, tagged("Berlin, Hamburg and Munich"), 0.0)
    c.add("iou", "draft-in-reasoning", rec, "<think>draft <answer>" + json.dumps({"columns": ["city"], "data": [["Bonn"]]})
          + "</answer> no, recount</think>\n" + f"<answer>{json.dumps(TABLE)}</answer>", 1.0)
    c.add("iou", "last-tag-counts", rec, think(0, f"<answer>{json.dumps({'columns': ['city'], 'data': [['Bonn']]})}</answer>\n"
                                                 f"Corrected:\n<answer>{json.dumps(TABLE)}</answer>"), 1.0)
    c.add("iou", "deep-json", rec, think(0, "<answer>" + "[" * 50_000 + "]" * 50_000 + "</answer>"), 0.0)
    # "cannot be inferred": only an explicit empty table matches the empty gold (issue 15, bug 3)
    rec = record("multitableqa_pretraining", "iou", golden_label=EMPTY)
    c.add("iou", "cannot-infer-right", rec, tagged(EMPTY), 1.0)
    c.add("iou", "cannot-infer-right-reordered", rec, tagged('{"data": [], "columns": []}'), 1.0)
    c.add("iou", "cannot-infer-fenced", rec, think(0, f"<answer>```json\n{EMPTY}\n```</answer>"), 1.0)
    for name, answer in [("braces", "{}"), ("object", '{"answer": "Berlin"}'), ("list", "[]"), ("null", "null"),
                         ("data-only", '{"data": []}'), ("string", '"cannot be inferred"'), ("blank", ""),
                         ("words", "The tables do not say.")]:
        c.add("iou", f"cannot-infer-{name}", rec, tagged(answer), 0.0)
    c.add("iou", "cannot-infer-rows", rec, tagged(TABLE), 0.0)


def subem_cases(c: Corpus) -> None:
    clusters = ["Cluster_A 25.00%", "Cluster_B 25.00%", "Cluster_C 50.00%"]
    rec = lbp("T6.1 Large-Scale Document Clustering", clusters)
    c.add("subem", "clusters", rec, think(0, "[Answer]\n" + "\n".join(clusters)), 1.0)
    c.add("subem", "clusters-reordered", rec, think(0, "[Answer]\n" + "\n".join(reversed(clusters))), 1.0)
    c.add("subem", "clusters-two", rec, think(0, "[Answer]\n" + "\n".join(clusters[:2])), 2 / 3)
    c.add("subem", "clusters-one-wrong", rec, think(0, "[Answer]\nCluster_A 25.00%\nCluster_B 30.00%\nCluster_C 45.00%"), 1 / 3)
    c.add("subem", "clusters-one-decimal", rec, think(0, "[Answer]\nCluster_A 25.0%\nCluster_B 25.0%\nCluster_C 50.0%"), 0.0)
    c.add("subem", "clusters-inline", rec, think(0, "[Answer]\n" + "; ".join(clusters)), 1.0)
    every = "\n".join(f"Cluster_{x} {p / 100:.2f}%" for x in "ABC" for p in range(0, 10001, 2500))  # 15 lines, 45 words
    c.add("subem", "clusters-enumerated", rec, think(0, "[Answer]\n" + every), 9 / 45)
    c.add("subem", "clusters-with-prefix", rec, think(0, "[Answer]\nClusters: " + ", ".join(clusters)), 9 / 10)
    # issue 15, bug 4: whole tokens only
    for mode, gold, cases in [
        ("T8.2 Single-Source Targeted Aggregation", "15", [("15", 1.0), ("15.", 1.0), ("**15**", 1.0), ("15 units", 0.5),
                                                           ("The total is 15", 0.25), ("150", 0.0), ("115", 0.0), ("1,500", 0.0),
                                                           ("1.5", 0.0), ("-15", 0.0), ("15\n16", 0.5), ("16\n15\n150", 1 / 3)]),
        ("T10.2 Targeted Example-Based Rule Induction", "support", [("support", 1.0), ("Support.", 1.0), ("unsupported", 0.0),
                                                                    ("support\noppose\nneutral", 1 / 3), ("oppose", 0.0),
                                                                    ("I would support it", 0.25), ("supports", 0.0)]),
        ("T8.3 Long-Context Procedural State Tracking", "state_3", [("state_3", 1.0), ("state_13", 0.0), ("state_3.", 1.0),
                                                                    ("state_30", 0.0), ("state_1\nstate_3", 0.5)]),
        ("T8.1 Structured Multi-Source Consistency Verification", "-2.2%", [("-2.2%", 1.0), ("2.2%", 0.0), ("-2.25%", 0.0),
                                                                             ("−2.2%", 1.0)]),
        ("T10.1 Large-Scale In-Context Rule Induction", "猫坐", [("猫坐", 1.0), ("猫坐下", 2 / 3), ("小猫", 0.0)]),
    ]:
        rec = lbp(mode, [gold], "Chinese" if gold == "猫坐" else "English")
        for area, expected in cases:
            c.add("subem", f"{gold}-in-{area!r}", rec, think(1, f"[Answer]\n{area}"), expected)
    rec = lbp("T8.3 Long-Context Procedural State Tracking", ["state_1", "state_3"])
    c.add("subem", "states", rec, think(0, "[Answer]\nstate_1\nstate_3"), 1.0)
    c.add("subem", "states-13", rec, think(0, "[Answer]\nstate_13"), 0.0)
    c.add("subem", "states-13-and-1", rec, think(0, "[Answer]\nstate_13\nstate_1"), 0.5)
    c.add("subem", "empty", rec, think(0, "[Answer]\n"), 0.0)
    c.add("subem", "in-reasoning-only", rec, "<think>[Answer]\nstate_1\nstate_3</think>\n", 0.0)
    c.add("subem", "huge-list", rec, think(0, "[Answer]\n" + "state_1\n" * 50_000), 2 / 50_000 * 0.5)


def ranking_ids() -> list[str]:
    return ["A2AV7Q95QGPT00", "A3NMORAYSL6PA8", "A1C9C1Q0QB94RT", "A17XJ0QK7MJC2Z", "A2M8Z3K4OUNV3P"]


def dcg(relevances: list[float]) -> float:
    return sum(r / math.log2(i + 2) for i, r in enumerate(relevances))


def ndcg_cases(c: Corpus) -> None:
    gold = ranking_ids()
    k = len(gold)
    rel = {g: k - j for j, g in enumerate(gold)}
    ideal = dcg([k - j for j in range(k)])
    rec = lbp("T1.1 Global Cohesive Retrieval", gold)
    orders = {"exact": gold, "reversed": gold[::-1], "swap-first": [gold[1], gold[0], *gold[2:]],
              "swap-last": [*gold[:3], gold[4], gold[3]], "first-three": gold[:3], "last-two": gold[3:],
              "one-wrong": [gold[0], "A0000000000000", *gold[1:4]], "rotated": gold[1:] + gold[:1],
              "extra-after": gold + ["A0000000000000"], "extra-before": ["A0000000000000", *gold]}
    for name, order in orders.items():
        c.add("ndcg", name, rec, think(0, "[Answer]\n" + "\n".join(order)), dcg([rel.get(p, 0) for p in order[:k]]) / ideal)
    c.add("ndcg", "lowercase", rec, think(0, "[Answer]\n" + "\n".join(g.lower() for g in gold)), 1.0)
    c.add("ndcg", "blank-lines", rec, think(0, "[Answer]\n" + "\n\n".join(gold)), 1.0)
    dup = [gold[1], gold[0], gold[1], *gold[2:]]  # the repeated item counts at its first position
    c.add("ndcg", "duplicate", rec, think(0, "[Answer]\n" + "\n".join(dup)),
          dcg([rel[p] for p in [gold[1], gold[0], *gold[2:]]]) / ideal)
    c.add("ndcg", "none", rec, think(0, "[Answer]\nA0000000000000"), 0.0)
    c.add("ndcg", "empty", rec, think(0, "[Answer]\n"), 0.0)
    c.add("ndcg", "no-marker", rec, think(0, "\n".join(gold)), 1.0)
    c.add("ndcg", "in-reasoning-only", rec, "<think>[Answer]\n" + "\n".join(gold) + "</think>\nsee above", 0.0)
    c.add("ndcg", "lowercase-marker", rec, think(0, "[answer]\n" + "\n".join(gold)), 1.0)
    rec = lbp("T1.2 Key-Snippet Retrieval", ["ID1", "ID2", "ID3"])
    ideal3 = dcg([3, 2, 1])
    for name, order, rels in [("exact", ["ID1", "ID2", "ID3"], [3, 2, 1]), ("b-a-c", ["ID2", "ID1", "ID3"], [2, 3, 1]),
                              ("c-b-a", ["ID3", "ID2", "ID1"], [1, 2, 3]), ("x-a", ["ID9", "ID1"], [0, 3])]:
        c.add("ndcg", name, rec, think(1, "[Answer]\n" + "\n".join(order)), dcg(rels) / ideal3)


def pairwise_cases(c: Corpus) -> None:
    for mode, gold in [("T2.1 Global Timeline Reconstruction", ["Part 5", "Part 1", "Part 9", "Part 3"]),
                       ("T2.2 Local Causal Chain Sorting", list("ABCDE")),
                       ("T6.3 Global Frequency Analysis", ["would", "this", "that", "went", "have"])]:
        rec = lbp(mode, gold)
        k = len(gold)
        pairs = k * (k - 1) / 2
        c.add("pairwise", "exact", rec, think(0, "[Answer]\n" + "\n".join(gold)), 1.0)
        c.add("pairwise", "reversed", rec, think(0, "[Answer]\n" + "\n".join(gold[::-1])), 0.0)
        c.add("pairwise", "swap-first", rec, think(0, "[Answer]\n" + "\n".join([gold[1], gold[0], *gold[2:]])), (pairs - 1) / pairs)
        c.add("pairwise", "rotate", rec, think(0, "[Answer]\n" + "\n".join(gold[1:] + gold[:1])), (pairs - (k - 1)) / pairs)
        c.add("pairwise", "first-two", rec, think(0, "[Answer]\n" + "\n".join(gold[:2])), 1 / pairs)
        c.add("pairwise", "all-but-last", rec, think(0, "[Answer]\n" + "\n".join(gold[:-1])), (k - 1) * (k - 2) / 2 / pairs)
        c.add("pairwise", "extra-item", rec, think(0, "[Answer]\n" + "\n".join(gold + ["Part 77"])), 1.0)
        c.add("pairwise", "blank-lines", rec, think(0, "[Answer]\n" + "\n\n".join(gold)), 1.0)
        c.add("pairwise", "duplicate", rec, think(0, "[Answer]\n" + "\n".join([gold[1], *gold])), (pairs - 1) / pairs)
        c.add("pairwise", "one-line", rec, think(0, "[Answer]\n" + ", ".join(gold)), 0.0)
        c.add("pairwise", "empty", rec, think(0, "[Answer]\n"), 0.0)
    rec = lbp("T2.2 Local Causal Chain Sorting", ["A"])
    c.add("pairwise", "single-gold", rec, think(0, "[Answer]\nA"), 1.0)
    c.add("pairwise", "single-gold-wrong", rec, think(0, "[Answer]\nB"), 0.0)
    rec = lbp("Pairwise_Accuracy", list("ABCD"))
    c.add("pairwise", "metric-name-mode", rec, think(0, "[Answer]\nA\nB\nC\nD"), 1.0)


SUMMARY = ("The committee approved the revised budget after a long debate. Funding for public transport rises by "
           "ten percent, while the road maintenance budget is cut. The opposition argued that the cuts would hurt "
           "rural areas and promised to challenge the decision next year.")
SUMMARY_ZH = "委员会经过长时间辩论批准了修订后的预算。公共交通资金增加百分之十，道路维护预算被削减。反对派认为削减会伤害农村地区。"


def rouge_expected(prediction: str, reference: str, chinese: bool) -> float:
    """ROUGE-L F by the rouge-score package (per character for Chinese), independently of golong."""
    from rouge_score import rouge_scorer

    class Chars:
        def tokenize(self, text):
            return [ch for ch in text if not ch.isspace() and ch not in "，。、；：！？"]

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Chars() if chinese else None)
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def rouge_cases(c: Corpus) -> None:
    words = SUMMARY.split()
    variants = {
        "exact": SUMMARY, "first-half": " ".join(words[: len(words) // 2]), "shuffled-sentences":
        " ".join(SUMMARY.split(". ")[::-1]), "paraphrase": "The revised budget was approved by the committee. Public "
        "transport gets ten percent more money and roads get less; the opposition will fight it next year.",
        "padded": SUMMARY + " " + " ".join(["moreover the report says"] * 30), "unrelated": "Quarterly revenue grew in Asia.",
        "lowercase": SUMMARY.lower(), "no-punctuation": re.sub(r"[^\w\s]", "", SUMMARY),
    }
    for mode in ("T4.1 Global-Coverage Constrained Summary", "T4.2 Query-Focused Summary"):
        rec = lbp(mode, [SUMMARY])
        for name, text in variants.items():
            c.add("rouge_l", name, rec, think(0, f"[Answer]\n{text}"), rouge_expected(text, SUMMARY, False))
        c.add("rouge_l", "no-marker", rec, think(0, SUMMARY), 1.0)
        c.add("rouge_l", "empty", rec, think(0, "[Answer]\n"), 0.0)
    rec = lbp("T4.1 Global-Coverage Constrained Summary", [SUMMARY_ZH], "Chinese")
    for name, text in {"zh-exact": SUMMARY_ZH, "zh-first-half": SUMMARY_ZH[:30], "zh-reordered": SUMMARY_ZH[30:] + SUMMARY_ZH[:30],
                       "zh-unrelated": "第三季度亚洲收入增长。"}.items():
        c.add("rouge_l", name, rec, think(2, f"[答案]\n{text}"), rouge_expected(text, SUMMARY_ZH, True))
    rec = lbp("T4.2 Query-Focused Summary", [SUMMARY, "The budget passed; transport up ten percent, roads cut."])
    c.add("rouge_l", "two-references", rec, think(0, "[Answer]\nThe budget passed; transport up ten percent, roads cut."), 1.0)


BUILDERS = [em_cases, selection_cases, f1_cases, math_cases, iou_cases, subem_cases, ndcg_cases, pairwise_cases, rouge_cases]


def build_corpus() -> list[Case]:
    corpus = Corpus()
    for build in BUILDERS:
        build(corpus)
    return corpus.cases


# ----------------------------------------------------------------------------------------------
# Known differences: each a rule over the case's input and the direction of the difference


@dataclass(frozen=True)
class View:
    """What the rules look at: the case, its scores, and its text as each scorer reads it."""

    case: Case
    golong: float
    reference: float | None  # None: the reference raised
    error: str  # the exception the reference raised, by class name ("" when it did not)
    final: str  # the response after its last </think> (what golong reads)
    area: str  # golong's answer area
    ref_lbp_area: str  # what the reference's LongBench-Pro metrics read: after the last exact "[Answer]"/"[答案]" of the whole response

    @property
    def gold(self):
        truth = self.case.record["reward_model"]["ground_truth"]
        return truth.get("doc_ids") if self.case.record["data_source"] == "longbench_pro" else truth["golden_label"]

    @property
    def higher(self) -> bool:  # golong scores more than the reference
        return self.reference is not None and self.golong > self.reference

    @property
    def lower(self) -> bool:
        return self.reference is not None and self.golong < self.reference


def _ref_lbp_area(response: str) -> str:
    for marker in ("[Answer]", "[答案]"):  # the reference looks for [Answer] first, then [答案]
        if marker in response:
            return response[response.rfind(marker) + len(marker):].strip()
    return response.strip()


def _ref_norm(text: str) -> str:
    """The reference's normalization of LongBench-Pro answers: lowercase, whitespace collapsed."""
    return " ".join(text.lower().split())


def _ref_lines(text: str) -> list[str]:
    return [_ref_norm(line) for line in text.split("\n")]


def _lines(text: str) -> list[str]:
    return [normalize(line) for line in text.splitlines()]


def _lbp(v: View) -> bool:
    return v.case.record["data_source"] == "longbench_pro"


def _first_line(text: str) -> str:
    return next((line for line in _lines(text) if line), "")


def _names_letter(text: str, letter: str | None) -> bool:
    """Whether `text` holds the option `letter` standing alone (any case, full-width folded)."""
    return letter is not None and re.search(rf"(?<![a-z]){letter.lower()}(?![a-z])",
                                            unicodedata.normalize("NFKC", text).lower()) is not None


def _whole_word_in(item: str, text: str) -> bool:
    """Whether `item` occurs in `text` between word boundaries (a number not continued by digits);
    CJK text, written without spaces, anywhere."""
    if re.search(r"[\u3040-\u30ff\u3400-\u9fff]", item):
        return item in text
    return re.search(rf"(?<![\w.,-]){re.escape(item)}(?!\w|[.,]\d)", text) is not None


def _verdict_clauses(text: str) -> list[str]:
    """The rest of each sentence after 'The correct answer is (X)'."""
    text = text.replace("*", "")
    return [re.split(r"[.;!?\n]", text[m.end():], maxsplit=1)[0]
            for m in re.finditer(r"the correct answer is\s*:?\s*\(?[A-Z]\)?", text, re.IGNORECASE)]


def _rows_matched_by_value(answer: str | None, gold: str) -> int:
    """Gold rows the answer's table holds when cells compare by value and columns by name (golong's reading)."""
    try:
        columns, rows = parse_table(answer)
    except Exception:
        return 0
    gold_columns, gold_rows = parse_table(gold)
    return sum((Counter(reorder(rows, columns, gold_columns)) & Counter(gold_rows)).values())


def _rows_matched_by_text(answer: str | None, gold: str) -> int:
    """Gold rows the answer's table holds when cells compare as str() in the answer's order (the reference's)."""
    try:
        rows = json.loads(answer)["data"]
    except Exception:
        return 0
    as_text = lambda rs: Counter(tuple(str(x) for x in r) if isinstance(r, list) else str(r) for r in rs)
    return sum((as_text(rows) & as_text(json.loads(gold)["data"])).values())


def _first_tagged(text: str) -> str | None:
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return m[1].strip() if m else None


def _last_tagged(text: str) -> str | None:
    found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return found[-1].strip() if found else None


def _letter_gold(gold) -> str | None:
    m = re.fullmatch(r"\s*(?:The correct answer is\s*)?\(?([A-Za-z])\)?\.?\s*", gold if isinstance(gold, str) else gold[0])
    return m[1].upper() if m else None


_PHRASE_REF = re.compile(r"The correct answer is \(?([A-D])")
_PHRASE_ANY = re.compile(r"the correct answer is\s*:?\s*\(?([A-Z])\b", re.IGNORECASE)
_WORD_TOKEN = re.compile(r"[^\W_]+|[\u4e00-\u9fff]")


def _phrases(v: View) -> list[str]:
    return _PHRASE_ANY.findall(v.final.replace("*", ""))


@dataclass(frozen=True)
class KnownDifference:
    name: str
    cls: str
    rewards: tuple[str, ...]
    applies: Callable[[View], bool]
    why: str


ALL = REWARD_TYPES
LBP = ("f1", "subem", "ndcg", "pairwise", "rouge_l", "accuracy")

KNOWN_DIFFERENCES: tuple[KnownDifference, ...] = (
    KnownDifference(
        "second think tag", CHOICE, ALL,
        lambda v: v.higher and v.reference == 0 and (v.case.response.count("<think>") > 1 or v.case.response.count("</think>") > 1),
        "The reference scores 0 any response with a second <think> or </think>; golong scores the text after the "
        "last </think> (0 only when a <think> is left open), so a template-opened <think> plus a model-written one "
        "is not a failure."),
    # --- EM
    KnownDifference(
        "EM reads the [Answer] area, normalized", CHOICE, ("em",),
        lambda v: v.higher and normalize(v.area) in {normalize(v.gold)} and v.final.strip() != v.gold.strip(),
        "Appendix B asks every task to print the [Answer] marker first; golong compares the text after it, NFKC + "
        "case + whitespace normalized. The reference compares the whole text after </think> byte for byte, so "
        "'[Answer]\\nParis' scores 0 there."),
    # --- multiple choice: released `selection` rows
    KnownDifference(
        "option letters past D", FIXES_BUG, ("accuracy",),
        lambda v: v.higher and (_letter_gold(v.gold) or "A") > "D" and _names_letter(v.final, _letter_gold(v.gold)),
        "The reference reads only A-D, but T2-c questions have options A-E (appendix B.4.3): a right (E) scores 0."),
    KnownDifference(
        "two verdicts that disagree", FIXES_BUG, ("accuracy",),
        lambda v: v.lower and len(set(_phrases(v))) > 1,
        "The reference takes the first 'The correct answer is (X)', so writing two verdicts hedges for free; golong "
        "requires every verdict to name the same option."),
    KnownDifference(
        "hedged verdict", FIXES_BUG, ("accuracy",),
        lambda v: v.lower and any(re.search(r"\([A-Z]\)|(?:\bor\b|\band\b|,|/)\s*(?:maybe\s+)?[A-Z]\b", clause)
                                  for clause in _verdict_clauses(v.final)),
        "Issue 15 bug 2: 'The correct answer is (C) or (D)' names two options; the reference reads (C) and pays it. "
        "golong scores 0 any answer that names more than one option, however phrased."),
    KnownDifference(
        "verdict letter read from a word", FIXES_BUG, ("accuracy",),
        lambda v: v.lower and re.search(r"The correct answer is [A-D][a-z]", v.final) is not None,
        "The reference's second pattern 'The correct answer is ([A-D])' has no word boundary: 'The correct answer "
        "is Definitely (B)' reads as option D."),
    KnownDifference(
        "appendix B answer formats for options", CHOICE, ("accuracy",),
        lambda v: v.higher and v.case.record["data_source"] == "selection" and not _PHRASE_REF.search(v.final.replace("*", ""))
        and _names_letter(v.area, _letter_gold(v.gold)),
        "The reference reads only the exact phrase 'The correct answer is (X)' (capital T, no colon); golong also "
        "reads appendix B.4's '[Answer]\\nC' and the phrase in any case or with a colon."),
    KnownDifference(
        "option letter spellings", CHOICE, ("accuracy",),
        lambda v: v.higher and v.case.record["data_source"] == "longbench_pro" and _letter_gold(v.gold) is not None
        and _ref_lines(v.ref_lbp_area)[:1] != [_ref_norm(v.gold[0])] and _names_letter(_first_line(v.area), _letter_gold(v.gold)),
        "For an option-letter gold golong accepts 'C', '(C)', 'C.', 'C) text', '**C**' and full-width letters on the "
        "first answer line; the reference needs the first line to be exactly the gold text."),
    # --- LongBench-Pro list answers
    KnownDifference(
        "answer marker spellings", CHOICE, LBP,
        lambda v: v.higher and _lbp(v) and "[Answer]" not in v.final and "[答案]" not in v.final and v.area != v.final,
        "golong's answer marker may be in any case, bold, with a colon or full-width brackets ('[answer]', "
        "'**[Answer]**:'); the reference knows only '[Answer]' and '[答案]' and otherwise reads the whole response."),
    KnownDifference(
        "LongBench-Pro answer read from the reasoning", FIXES_BUG, LBP,
        lambda v: _lbp(v) and v.case.reward != "rouge_l" and _ref_lbp_area(v.case.response) != _ref_lbp_area(v.final),
        "The reference is handed the whole response for LongBench-Pro rows: without an exact '[Answer]' after "
        "</think> it reads from a marker inside the reasoning, or the reasoning itself, as the answer. golong scores "
        "only the text after </think>."),
    KnownDifference(
        "later line names another option", FIXES_BUG, ("accuracy",),
        lambda v: v.lower and _letter_gold(v.gold) is not None
        and any(re.fullmatch(r"\(?[A-Za-z]\)?[.)]?(?:\s.*)?", line) for line in _ref_lines(v.ref_lbp_area)[1:] if line),
        "The reference reads only the first answer line, so one option per line ('C\\nD') names two options and is "
        "paid when the first is right; golong scores it 0."),
    KnownDifference(
        "summary scored with the reasoning", FIXES_BUG, ("rouge_l",),
        lambda v: normalize(v.case.response) != normalize(v.area),
        "The reference's ROUGE-L reads the whole response: the reasoning, '</think>' and the '[Answer]' marker are "
        "part of the 'summary' (a right summary scores 0.70-0.75, an empty one 0.1). golong scores the answer "
        "area; see the second table for the reference's ROUGE-L on golong's answer area."),
    KnownDifference(
        "blank lines are not items", CHOICE, ("f1", "ndcg", "pairwise"),
        lambda v: "" in _ref_lines(v.ref_lbp_area),
        "golong drops blank lines of the answer; the reference counts each as an item '' (a wrong citation for F1, "
        "a ranked document for NDCG, extra pairs in the denominator for pairwise)."),
    KnownDifference(
        "Unicode NFKC", CHOICE, LBP,
        lambda v: v.higher and _lbp(v) and unicodedata.normalize("NFKC", v.area).replace("\u2212", "-") != v.area,
        "golong folds full-width and compatibility characters (NFKC) before comparing ('ｂｅｌｅｉｖｅ' is 'beleive'; "
        "SubEM also reads the minus sign U+2212 as '-'); the reference only lowercases."),
    # --- SubEM
    KnownDifference(
        "SubEM enumeration", FIXES_BUG, ("subem",),
        lambda v: v.lower and len(_WORD_TOKEN.findall(normalize(v.area))) > sum(len(_WORD_TOKEN.findall(normalize(g))) for g in v.gold),
        "The reference gives full credit to every gold item listed as a line, so listing all candidates collects "
        "them all; golong scales credit by gold words / answer words (listing n candidates earns what guessing does)."),
    KnownDifference(
        "SubEM whole tokens inside a line", CHOICE, ("subem",),
        lambda v: v.higher and any(normalize(g) not in _lines(v.area) and _whole_word_in(normalize(g), normalize(v.area))
                                   for g in v.gold),
        "T6 is substring exact match: golong finds a gold item as a whole token sequence anywhere in the answer "
        "('15.' and '15 units' contain 15; '150' does not); the reference needs a line equal to the item."),
    # --- pairwise
    KnownDifference(
        "pairwise counts the answer's pairs", FIXES_BUG, ("pairwise",),
        lambda v: v.lower and len([x for x in _lines(v.ref_lbp_area) if x]) < len(v.gold),
        "The reference divides the right gold pairs by the pairs of the answer's lines, so a partial list ('A\\nB' "
        "of A..E) scores 1.0; golong divides by the gold's k(k-1)/2 pairs."),
    KnownDifference(
        "pairwise: extra lines cost nothing", CHOICE, ("pairwise",),
        lambda v: v.higher and len(set(x for x in _lines(v.ref_lbp_area) if x)) > len(v.gold),
        "golong's score is the fraction of gold pairs in the right order: an extra line earns nothing and costs "
        "nothing. The reference's denominator grows with every extra line."),
    KnownDifference(
        "repeated line", CHOICE, ("pairwise", "ndcg"),
        lambda v: len([x for x in _lines(v.ref_lbp_area) if x]) > len(set(x for x in _lines(v.ref_lbp_area) if x)),
        "golong counts a repeated item at its first position and each line once; the reference keeps its last "
        "position and counts the repeat in its pairs."),
    KnownDifference(
        "pairwise: one gold item", CHOICE, ("pairwise",),
        lambda v: v.higher and len(v.gold) == 1 and normalize(v.gold[0]) in _lines(v.area),
        "With one gold item there are no pairs: golong scores 1 when the answer lists it, the reference always 0."),
    # --- math
    KnownDifference(
        "math: one value per gold line", CHOICE, ("math_verify",),
        lambda v: v.higher and "\n" in v.gold.strip(),
        "Appendix B.6 answers several values line by line ('5.5%\\n-2.2%'); golong scores the fraction of gold lines "
        "matched at their position, the reference parses the whole gold as one expression and never matches."),
    KnownDifference(
        "math: text golds", FIXES_BUG, ("math_verify",),
        lambda v: v.higher and re.search(r"[A-Za-z]{2,}|[A-Za-z]\d", re.sub(r"\\[a-zA-Z]+", " ", v.gold)) is not None
        and normalize(v.gold) in _lines(v.area),
        "T4-a's answer is 'No Error' or record IDs (appendix B.6.1); the reference parses them as math and never "
        "scores them. golong compares non-math golds as normalized text."),
    KnownDifference(
        "math: LaTeX without delimiters", CHOICE, ("math_verify",),
        lambda v: v.higher and "\\" in v.area and "$" not in v.area and "\\boxed" not in v.area,
        "A short answer such as '\\sqrt{18}' with no $...$ or \\boxed{} is also read as LaTeX by golong; the "
        "reference's parser finds nothing in it."),
    KnownDifference(
        "math read from the reasoning", FIXES_BUG, ("math_verify",),
        lambda v: v.lower and v.case.response[-500:] != v.final[-500:],
        "The reference parses the last 500 characters of the whole response, reasoning included, so an answer "
        "left in the reasoning (and none after </think>) scores; golong scores only the text after </think>."),
    # --- IoU
    KnownDifference(
        "IoU: reference crashes on deep JSON", FIXES_BUG, ("iou",),
        lambda v: v.error == "RecursionError",
        "json.loads of deeply nested brackets raises RecursionError, which the reference does not catch: one "
        "hostile output stops its reward computation. golong scores it 0."),
    KnownDifference(
        "IoU: the empty table answers the empty gold", FIXES_BUG, ("iou",),
        lambda v: v.higher and json.loads(v.gold) == {"columns": [], "data": []},
        "Appendix B.7: when the tables cannot answer, output {\"columns\": [], \"data\": []}. The reference's IoU of "
        "two empty tables is 0/0, which it scores 0, so the one right answer earns nothing."),
    KnownDifference(
        "IoU: first <answer> anywhere", FIXES_BUG, ("iou",),
        lambda v: _first_tagged(v.case.response) != _last_tagged(v.final),
        "The reference reads the first <answer>...</answer> of the whole response, so a draft in the reasoning or "
        "a corrected second answer is scored by the draft; golong reads the last one after </think>."),
    KnownDifference(
        "IoU: code fence", CHOICE, ("iou",),
        lambda v: v.higher and (_last_tagged(v.final) or "").startswith("```"),
        "golong drops a ```json fence around the table; the reference's json.loads fails on it."),
    KnownDifference(
        "IoU: table in the [Answer] area", CHOICE, ("iou",),
        lambda v: v.higher and "<answer>" not in v.final,
        "golong reads the table from the answer area when there are no <answer> tags."),
    KnownDifference(
        "IoU: cells by value, columns by name", CHOICE, ("iou",),
        lambda v: v.higher and _rows_matched_by_value(_last_tagged(v.final), v.gold) > _rows_matched_by_text(_last_tagged(v.final), v.gold),
        "golong compares cells by value (1 == 1.0 == \"1\", case and spaces of text ignored), reorders columns by "
        "name and reads {column: value} rows; the reference compares str() of each cell in the answer's order."),
    KnownDifference(
        "IoU: a table has columns", CHOICE, ("iou",),
        lambda v: v.lower and '"columns"' not in v.area,
        "A JSON object without a columns list is not a table (appendix B.7's format); golong scores it 0, the "
        "reference reads its data rows."),
    # --- routing
    KnownDifference(
        "reward_mode by metric name or id", CHOICE, LBP,
        lambda v: v.reference is None and v.case.record["extra_info"]["reward_mode"] in
        ("NDCG", "Pairwise_Accuracy", "Accuracy", "F1_Score", "SubEM", "Summary"),
        "golong routes LongBench-Pro rows by subtask, subtask id or metric name; the reference raises on anything "
        "but the full subtask name."),
)


def classify(view: View) -> KnownDifference | None:
    for difference in KNOWN_DIFFERENCES:
        if view.case.reward in difference.rewards and difference.applies(view):
            return difference
    return None


# ----------------------------------------------------------------------------------------------
# Scoring


def golong_score(case: Case) -> float:
    reward, gold = route_released(case.record)
    return compute_score(reward, case.response, gold, require_think_close=True)


REFERENCE_PACKAGE = "golongrl_reference_scorer"  # the name the reference's directory is imported under


def load_reference(path: Path, deps: Path | None) -> Callable:
    """The reference's `default_compute_score`, imported from its reward_score directory at `path`
    (or a checkout containing verl/utils/reward_score) as a package of its own."""
    if not (path / "long_bench_pro.py").exists():
        found = sorted(path.glob("**/verl/utils/reward_score/long_bench_pro.py"))
        if not found:
            raise SystemExit(f"--reference {path}: no long_bench_pro.py there or under */verl/utils/reward_score/")
        path = found[0].parent
    if deps is not None:
        sys.path.append(str(deps))  # after the venv, so its numpy etc. win
    # its __init__ imports `verl.utils.import_utils.deprecated` (unused by the scorers): give it a no-op
    for name in ("verl", "verl.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    if "verl.utils.import_utils" not in sys.modules:
        stub = types.ModuleType("verl.utils.import_utils")
        stub.deprecated = lambda *args, **kwargs: (lambda fn: fn)
        sys.modules["verl.utils.import_utils"] = stub
    spec = importlib.util.spec_from_file_location(REFERENCE_PACKAGE, path / "__init__.py",
                                                  submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.default_compute_score


def reference_score(fn: Callable, case: Case) -> tuple[float | None, str]:
    """(the reference's score, "") or (None, the class name of what it raised)."""
    rec = case.record
    try:
        return float(fn(rec["data_source"], case.response, rec["reward_model"]["ground_truth"], rec["extra_info"])), ""
    except Exception as e:
        return None, type(e).__name__


def view_of(case: Case, golong: float, reference: float | None, error: str = "") -> View:
    final = reasoning_removed(case.response, require_think_close=True) or ""
    return View(case=case, golong=golong, reference=reference, error=error, final=final, area=answer_area(final),
                ref_lbp_area=_ref_lbp_area(case.response))


ROUGE_DIFFERENCES = (  # (class, name, rule over (golong, reference, answer words, summary words, chinese))
    (CHOICE, "Chinese tokens: characters in golong, jieba words in the reference",
     lambda g, r, ans, ref, zh: zh),
    (FIXES_BUG, "padding: the `rouge` package's summary-level ROUGE-L barely penalises words added to a right summary",
     lambda g, r, ans, ref, zh: g < r and len(ans) > len(ref) and Counter(ref) - Counter(ans) == Counter()),
    (CHOICE, "sentence order: summary-level ROUGE-L (the `rouge` package) ignores the order of sentences",
     lambda g, r, ans, ref, zh: g < r and Counter(ans) == Counter(ref)),
    (CHOICE, "tokens: golong's are rouge-score's (punctuation dropped); the `rouge` package keeps it in words "
             "and splits sentences at '.'",
     lambda g, r, ans, ref, zh: True),
)


def rouge_on_area(rows) -> None:
    """The reference's own ROUGE-L (`long_bench_pro.Summary`) on golong's answer area: the summary
    differences left once the reference's reading of the whole response is taken out."""
    module = sys.modules.get(f"{REFERENCE_PACKAGE}.long_bench_pro")
    if module is None:
        return
    print("\nrouge_l on golong's answer area (the reference's ROUGE-L with its whole-response input taken out):")
    counts = Counter()
    for case, g, _, _ in rows:
        if case.reward != "rouge_l":
            continue
        truth = case.record["reward_model"]["ground_truth"]
        area = answer_area(reasoning_removed(case.response, require_think_close=True) or "")
        chinese = truth["summary"] == "Chinese"
        r = float(module.Summary(truth["doc_ids"], area, chinese))
        words = lambda text: re.findall(r"\w+", text.lower())
        if abs(g - r) <= TOLERANCE:
            counts["agree"] += 1
            continue
        cls, name = next((cls, name) for cls, name, rule in ROUGE_DIFFERENCES
                         if rule(g, r, words(area), words(truth["doc_ids"][0]), chinese))
        counts[cls] += 1
        print(f"  {case.id:<48} {g:.4f} / {r:.4f}  {cls}: {name}")
    print(f"  agree {counts['agree']}, {FIXES_BUG} {counts[FIXES_BUG]}, {CHOICE} {counts[CHOICE]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="the reference's verl/utils/reward_score directory (or a checkout above it)")
    parser.add_argument("--reference-deps", type=Path, help="a directory with jieba, rouge and pytrec_eval (pip --target)")
    parser.add_argument("--write-corpus", type=Path, help="also write the corpus as JSON lines here")
    parser.add_argument("--json", type=Path, help="write every case's scores and class here")
    args = parser.parse_args()

    cases = build_corpus()
    if args.write_corpus:
        args.write_corpus.write_text("".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in cases))
    reference = load_reference(args.reference, args.reference_deps) if args.reference else None

    start = time.perf_counter()
    rows, misses = [], []
    for case in cases:
        g = golong_score(case)
        if not math.isclose(g, case.expected, abs_tol=1e-9):
            misses.append((case, g))
        r, error = reference_score(reference, case) if reference else (None, "")
        rows.append((case, g, r, error))
    elapsed = time.perf_counter() - start

    per_type = Counter(c.reward for c in cases)
    print(f"corpus: {len(cases)} cases over {len(per_type)} reward types, "
          + ", ".join(f"{t} {per_type[t]}" for t in REWARD_TYPES) + f"; scored in {elapsed:.1f} s")
    print(f"golong against the expected scores: {len(cases) - len(misses)}/{len(cases)}")
    for case, g in misses:
        print(f"  MISS {case.id}: golong {g:.6f}, expected {case.expected:.6f}")
    if reference is None:
        print("reference scorer: not given (--reference PATH); golong checked alone")
        return 1 if misses else 0

    by_class: dict[str, Counter] = defaultdict(Counter)
    agree: Counter = Counter()
    out, disagreements = [], []
    for case, g, r, error in rows:
        same = r is not None and abs(g - r) <= TOLERANCE
        agree[case.reward] += same
        cls, name = ("agree", "") if same else (UNEXPLAINED, "")
        if not same:
            difference = classify(view_of(case, g, r, error))
            if difference is not None:
                cls, name = difference.cls, difference.name
            disagreements.append((case, g, r, cls, name))
            by_class[case.reward][cls] += 1
        out.append({"id": case.id, "reward": case.reward, "golong": g, "reference": r, "class": cls, "difference": name})

    print("\nagreement with the reference (|golong - reference| <= 1e-6), per reward type:")
    print(f"  {'reward':<12} {'cases':>5} {'agree':>6} {'share':>6}  {'fixes bug':>9} {'choice':>6} {'unexpl.':>7}")
    for t in REWARD_TYPES:
        n = per_type[t]
        print(f"  {t:<12} {n:>5} {agree[t]:>6} {agree[t] / n:>6.1%}  {by_class[t][FIXES_BUG]:>9} {by_class[t][CHOICE]:>6} "
              f"{by_class[t][UNEXPLAINED]:>7}")
    total = sum(agree.values())
    counts = Counter(d[3] for d in disagreements)
    print(f"  {'all':<12} {len(cases):>5} {total:>6} {total / len(cases):>6.1%}  {counts[FIXES_BUG]:>9} {counts[CHOICE]:>6} "
          f"{counts[UNEXPLAINED]:>7}")

    print("\ndisagreements by known difference:")
    for difference in KNOWN_DIFFERENCES:
        hits = [d for d in disagreements if d[4] == difference.name]
        if hits:
            print(f"  [{difference.cls}] {difference.name}: {len(hits)}")
    print("\nevery disagreement (golong / reference):")
    for case, g, r, cls, name in disagreements:
        ref = "raised" if r is None else f"{r:.4f}"
        print(f"  {case.id:<48} {g:.4f} / {ref:<7} {cls}{': ' + name if name else ''}")
    rouge_on_area(rows)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return 1 if misses or counts[UNEXPLAINED] else 0


if __name__ == "__main__":
    sys.exit(main())
