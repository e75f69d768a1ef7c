"""Math rewards: math_verify equivalence (T4) and the released `retrieval_calculate` composite.

math_verify bounds its own parsing and comparisons with `signal.alarm`, which works only in a
process's main thread. We enable it consciously there (the scoring workers' main thread, or a
caller's) with a short limit, and turn its expiry into `RewardTimeout`, which the pool counts as a
timeout. Off the main thread the alarms are off and the caller must bound the time (the pool does, by
killing the worker). Nothing in an answer is executed: math_verify reads LaTeX with an ANTLR parser
and hands sympy's parse_expr only strings of digits and arithmetic operators. It is imported on first
use, so importing golong.rewards (and the config) stays light.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache

from golong.rewards.extract import CJK_RANGES, Answer, last_tagged, normalize
from golong.rewards.registry import RewardTimeout, ScoringRules, register

MATH_VERIFY_TIMEOUT_S = 2  # math_verify's limit per parse or comparison (whole seconds: signal.alarm)
MATH_TAIL_CHARS = 1000  # math_verify reads the end of an answer only; final answers are short
BARE_LATEX_CHARS = 200  # an answer this short is also tried as LaTeX without delimiters (`\sqrt{18}`)

# A gold that is words or identifiers, not math: a run of two letters outside LaTeX commands
# (`No Error`, `state_1`, `\text{No Error}`), a letter right before a digit (`R1023`), or CJK text.
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
_TEXT_GOLD = re.compile(rf"[^\W\d_]{{2,}}|[^\W\d_]\d|[{CJK_RANGES}]")


def _alarm_seconds() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def parse_math(text: str) -> list:
    """math_verify's parse (sympy objects and the matched strings); [] when nothing parses."""
    from math_verify import parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, parsing_timeout=_alarm_seconds(), raise_on_error=True)
    except TimeoutException:
        raise RewardTimeout("math_verify parsing timed out") from None
    except Exception:  # math_verify raises whatever sympy raises on text it cannot parse
        return []


def same_math(gold, predicted) -> bool:
    """Any parsed gold equal to any parsed prediction by math_verify.verify, pair by pair so that
    one comparison sympy cannot do does not hide the others."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    for g in gold:
        for p in predicted:
            try:
                if verify(g, p, timeout_seconds=_alarm_seconds(), raise_on_error=True):
                    return True
            except TimeoutException:
                raise RewardTimeout("math_verify comparison timed out") from None
            except Exception:
                continue
    return False


@lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple:
    """A math gold parsed once per worker: the G responses to a prompt share it."""
    return tuple(parse_math(gold if "\\boxed" in gold or "$" in gold else f"\\boxed{{{gold}}}"))


def is_text_gold(gold: str) -> bool:
    return _TEXT_GOLD.search(_LATEX_COMMAND.sub(" ", gold)) is not None


def equivalent(gold: str, predicted: str) -> bool:
    """A predicted answer equals a gold answer: as normalized text, or, for a math gold, by
    math_verify (`\\boxed{}`, plain numbers, fractions, percentages, expressions)."""
    if normalize(gold) == normalize(predicted):
        return True
    if is_text_gold(gold):
        return False
    tail = predicted.strip()[-MATH_TAIL_CHARS:]
    predicted_math = parse_math(tail)
    if not predicted_math and len(tail) <= BARE_LATEX_CHARS:
        predicted_math = parse_math(f"${tail}$")
    return same_math(parse_gold(gold), predicted_math)


def gold_lines(gold) -> list[str]:
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold = str(gold)
    if isinstance(gold, str):
        gold = gold.splitlines()
    if not isinstance(gold, (list, tuple)) or not all(isinstance(g, str) for g in gold):
        raise ValueError(f"math_verify: the gold must be a string or a list of strings, got {type(gold).__name__}")
    lines = [g.strip() for g in gold if g.strip()]
    if not lines:
        raise ValueError("math_verify: empty gold")
    return lines


@register("math_verify")
def math_verify_reward(answer: Answer, gold, rules: ScoringRules) -> float:
    """T4. One gold line: 1 if the answer area is equivalent to it (see `equivalent`), else 0.
    Several gold lines g_1..g_n (or a list): (1/n) * sum_i [line i of the answer ~ g_i], lines being
    the non-empty lines of the answer area. A gold that is not math (`No Error`, record IDs)
    compares as normalized text."""
    golds = gold_lines(gold)
    if len(golds) == 1:
        return float(equivalent(golds[0], answer.area))
    predicted = [line.strip() for line in answer.area.splitlines() if line.strip()]
    return sum(equivalent(g, p) for g, p in zip(golds, predicted)) / len(golds)


_DOC_ID = re.compile(r"<\|doc_\d+\|>")


@register("retrieval_calculate")
def retrieval_calculate(answer: Answer, gold, rules: ScoringRules) -> float:
    """Released `retrieval_calculate` rows (a tenth, internal reward type; not one of the nine tasks).
    1 iff the set of `<|doc_N|>` ids in the answer's last <relevant_doc_ids> block equals the set of
    gold `doc_ids` AND its last <continue_reasoning> block is `equivalent` to the gold
    `golden_label`, else 0: the reference scorer's all-or-nothing composite.
    Gold: {"doc_ids": [...], "golden_label": "..."}."""
    if not isinstance(gold, dict) or "doc_ids" not in gold or "golden_label" not in gold:
        raise ValueError("retrieval_calculate: the gold must be {'doc_ids': [...], 'golden_label': ...}")
    doc_block = last_tagged(answer.text, "<relevant_doc_ids>", "</relevant_doc_ids>")
    reasoning = last_tagged(answer.text, "<continue_reasoning>", "</continue_reasoning>")
    if doc_block is None or not reasoning:
        return 0.0
    if set(_DOC_ID.findall(doc_block)) != {str(d).strip() for d in gold["doc_ids"]}:
        return 0.0
    return float(equivalent(str(gold["golden_label"]).strip(), reasoning))
