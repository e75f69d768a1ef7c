"""Text-matching rewards (paper Table 1): exact match (T1), multiple-choice accuracy (T2), F1 (T3),
substring exact match (T6). The paper gives no formulas; each docstring states the one used."""
from __future__ import annotations

import re
from collections import Counter

from golong.rewards.extract import Answer, normalize, tokens
from golong.rewards.registry import ScoringRules, register


def gold_list(gold, name: str) -> list[str]:
    """A gold given as one string or as a list of strings, as a list (reward `name` for the error)."""
    if isinstance(gold, str):
        return [gold]
    if isinstance(gold, (list, tuple)) and all(isinstance(g, str) for g in gold):
        return list(gold)
    raise ValueError(f"{name}: the gold must be a string or a list of strings, got {type(gold).__name__}")


@register("em")
def exact_match(answer: Answer, gold, rules: ScoringRules) -> float:
    """T1. 1 if normalize(answer area) == normalize(g) for the gold g or any of several golds, else 0."""
    return float(answer.normalized in {normalize(g) for g in gold_list(gold, "em")})


# ----------------------------------------------------------------------------------------------
# T2: multiple choice

# One option letter, bare or in parentheses, optionally followed by `.`/`)` and the option's text,
# matched on a normalized (lowercased) line: `c`, `(c)`, `c.`, `c) paris`, `(c) paris`.
_OPTION = re.compile(r"^(?:\((?P<paren>[a-z])\)[.:]?|(?P<bare>[a-z])(?:[.)]|$))\s*(?P<text>.*)$")
# The option text may not itself start with an option (`(a) (b)`, `a. b.` name two letters).
_SECOND_OPTION = re.compile(r"^(?:\([a-z]\)|[a-z][.)]|[a-z]$)")
# "The correct answer is (X)", the phrasing of the released GoLongRL `selection` rows. The letter is
# read before lowercasing and must be a capital, so "the correct answer is a cat" names no option.
_PHRASE = re.compile(r"(?i:the\s+correct\s+answer\s+is)\s*:?\s*(?:\(([A-Z])\)|([A-Z])(?=\s*(?:$|[.,;:!)\n])))")


def option_letter(line: str) -> str | None:
    """The option letter a normalized line names by itself, or None (no option, or several)."""
    m = _OPTION.match(line.replace("*", ""))  # markdown bold around the letter is not part of it
    if m is None or _SECOND_OPTION.match(m["text"]):
        return None
    return m["paren"] or m["bare"]


def phrased_letters(text: str) -> set[str]:
    return {(a or b).lower() for a, b in _PHRASE.findall(text.replace("*", ""))}


def gold_letter(gold: list[str]) -> str | None:
    """The option letter of a multiple-choice gold (`C`, `(C)`, or the released phrasing), else None."""
    first = gold[0]
    letters = phrased_letters(first)
    return letters.pop() if len(letters) == 1 else option_letter(normalize(first))


@register("accuracy")
def multiple_choice_accuracy(answer: Answer, gold, rules: ScoringRules) -> float:
    """T2. 1 if the answer names exactly the gold option, else 0.

    Option-letter gold: when the answer says "The correct answer is (X)" (the released `selection`
    phrasing), those phrases decide and must all name the same letter. Otherwise the first line of the
    answer area must be one option (`C`, `(C)`, `C.`, `C) Paris`) and no other line may name another
    option by itself, so `ABCD`, `A B`, `(A) (B)` and one letter per line score 0.
    Free-text gold (LongBench-Pro Accuracy rows): 1 if the first line of the answer area equals a gold
    item after normalization.
    """
    golds = gold_list(gold, "accuracy")
    if not golds:
        raise ValueError("accuracy: empty gold")
    lines = answer.lines
    letter = gold_letter(golds)
    if letter is None:
        return float(bool(lines) and lines[0] in {normalize(g) for g in golds})
    named = phrased_letters(answer.area)
    if not named and lines and option_letter(lines[0]) is not None:
        named = {option_letter(line) for line in lines} - {None}
    return float(named == {letter})


# ----------------------------------------------------------------------------------------------
# T3: F1

_ARTICLES = {"a", "an", "the"}


def f1_from_counts(common: int, n_pred: int, n_gold: int) -> float:
    """F1 = 2PR / (P + R) with P = common / n_pred, R = common / n_gold."""
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_gold
    return 2 * precision * recall / (precision + recall)


@register("f1")
def f1(answer: Answer, gold, rules: ScoringRules) -> float:
    """T3. Gold a list: F1 between the set of predicted lines and the set of gold items (normalized,
    duplicates once, blank lines ignored; both empty scores 1). Gold a string: bag-of-words token F1 as
    in SQuAD (tokens without punctuation and the articles a/an/the; CJK characters are tokens)."""
    if isinstance(gold, str):
        pred = Counter(t for t in tokens(answer.area) if t not in _ARTICLES)
        ref = Counter(t for t in tokens(gold) if t not in _ARTICLES)
        if not pred or not ref:
            return float(pred == ref)
        return f1_from_counts(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))
    pred_set = set(answer.lines)
    gold_set = {normalize(g) for g in gold_list(gold, "f1")} - {""}
    if not pred_set or not gold_set:
        return float(pred_set == gold_set)
    return f1_from_counts(len(pred_set & gold_set), len(pred_set), len(gold_set))


# ----------------------------------------------------------------------------------------------
# T6: substring exact match


@register("subem")
def substring_match(answer: Answer, gold, rules: ScoringRules) -> float:
    """T6. (gold items found as substrings of the normalized answer area) / (number of gold items),
    times the anti-enumeration factor min(1, ratio * L_gold / L_answer).

    L_gold is the length of the normalized gold items joined by spaces, L_answer that of the
    normalized answer area (its lines joined by spaces too), ratio = `subem_length_ratio` (default 1).
    Without the factor, an answer listing every candidate would collect every item; with it, an
    answer n times as long as the gold keeps 1/n of its credit, so listing n candidates earns what
    guessing one of them earns on average. An answer no longer than the gold is not penalised.
    """
    items = [g for g in (normalize(g) for g in gold_list(gold, "subem")) if g]
    if not items:
        raise ValueError("subem: empty gold")
    area = answer.normalized
    if not area:
        return 0.0
    found = sum(item in area for item in items)
    gold_length = len(" ".join(items))
    return found / len(items) * min(1.0, rules.subem_length_ratio * gold_length / len(area))
