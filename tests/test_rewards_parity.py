"""The parity corpus of bench/reward_parity.py as a regression test, and its classification rules."""
from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

from golong.rewards import REWARD_TYPES


@pytest.fixture(scope="module")
def parity():
    path = Path(__file__).resolve().parents[1] / "bench" / "reward_parity.py"
    spec = importlib.util.spec_from_file_location("reward_parity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_corpus_covers_every_reward_and_golong_gives_every_expected_score(parity):
    cases = parity.build_corpus()
    counts = Counter(c.reward for c in cases)
    assert len(cases) >= 500 and set(counts) == set(REWARD_TYPES) and min(counts.values()) >= 20
    assert len({c.id for c in cases}) == len(cases)
    misses = [(c.id, parity.golong_score(c), c.expected) for c in cases
              if abs(parity.golong_score(c) - c.expected) > 1e-9]
    assert misses == []


def case(parity, reward, record, answer):
    return parity.Case(id=f"{reward}/test", reward=reward, record=record, response=parity.think(0, answer), expected=0.0)


def explain(parity, c, golong, reference, error=""):
    difference = parity.classify(parity.view_of(c, golong, reference, error))
    return None if difference is None else (difference.cls, difference.name)


def test_rules_explain_the_known_reference_bugs(parity):
    sel = parity.record("selection", golden_label="The correct answer is (C)")
    assert explain(parity, case(parity, "accuracy", sel, "The correct answer is (C) or (D)"), 0.0, 1.0) == (
        parity.FIXES_BUG, "hedged verdict")
    pw = parity.lbp("T2.2 Local Causal Chain Sorting", list("ABCDE"))
    assert explain(parity, case(parity, "pairwise", pw, "[Answer]\nA\nB"), 0.1, 1.0) == (
        parity.FIXES_BUG, "pairwise counts the answer's pairs")
    iou = parity.record("multitableqa_pretraining", golden_label=parity.EMPTY)
    assert explain(parity, case(parity, "iou", iou, f"<answer>{parity.EMPTY}</answer>"), 1.0, 0.0) == (
        parity.FIXES_BUG, "IoU: the empty table answers the empty gold")
    sub = parity.lbp("T10.2 Targeted Example-Based Rule Induction", ["support"])
    assert explain(parity, case(parity, "subem", sub, "[Answer]\nsupport\noppose\nneutral"), 1 / 3, 1.0) == (
        parity.FIXES_BUG, "SubEM enumeration")
    assert explain(parity, case(parity, "subem", sub, "[Answer]\nSupport."), 1.0, 0.0) == (
        parity.CHOICE, "SubEM whole tokens inside a line")


def test_rules_are_not_catch_alls(parity):
    # disagreements no rule may explain: the same plain answer scored differently, or golong paying a
    # wrong answer the reference does not
    em = parity.record("EM", golden_label="Paris")
    assert explain(parity, case(parity, "em", em, "Paris"), 0.0, 1.0) is None
    assert explain(parity, case(parity, "em", em, "[Answer]\nLyon"), 1.0, 0.0) is None
    sel = parity.record("selection", golden_label="The correct answer is (C)")
    assert explain(parity, case(parity, "accuracy", sel, "The correct answer is (C)"), 0.0, 1.0) is None
    pw = parity.lbp("T2.2 Local Causal Chain Sorting", list("ABCDE"))
    assert explain(parity, case(parity, "pairwise", pw, "[Answer]\nA\nB\nC\nD\nE"), 1.0, 0.5) is None
    assert explain(parity, case(parity, "accuracy", sel, "[Answer]\nA"), 1.0, 0.0) is None
    sub = parity.lbp("T10.2 Targeted Example-Based Rule Induction", ["support"])
    assert explain(parity, case(parity, "subem", sub, "[Answer]\nsupport"), 0.5, 1.0) is None
    num = parity.lbp("T8.2 Single-Source Targeted Aggregation", ["15"])
    for wrong in ("150", "115", "1,500", "-15", "1.5"):  # issue 15's SubEM bug would not pass as a choice
        assert explain(parity, case(parity, "subem", num, f"[Answer]\n{wrong}"), 0.667, 0.0) is None
    assert explain(parity, case(parity, "subem", num, "[Answer]\n15 units"), 0.5, 0.0) == (
        parity.CHOICE, "SubEM whole tokens inside a line")
    letters = parity.lbp("T3.2 Single-Hop Fact QA", ["E. coli"])
    assert explain(parity, case(parity, "accuracy", letters, "[Answer]\nE. faecalis"), 1.0, 0.0) is None  # issue 15 bug 1
    table = parity.record("multitableqa_pretraining", golden_label='{"columns": ["a"], "data": [[1]]}')
    assert explain(parity, case(parity, "iou", table, '<answer>{"columns": ["a"], "data": [[2]]}</answer>'), 1.0, 0.0) is None
    assert explain(parity, case(parity, "iou", table, '<answer>{"columns": ["a"], "data": [[1.0]]}</answer>'), 1.0, 0.0) == (
        parity.CHOICE, "IoU: cells by value, columns by name")
    assert explain(parity, case(parity, "iou", table, '<answer>{"columns": ["a"], "data": [[1]]}</answer>'), 0.0, 1.0) is None
