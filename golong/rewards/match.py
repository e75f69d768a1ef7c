"""Text-matching rewards (paper Table 1): exact match (T1), multiple-choice accuracy (T2), F1 (T3),
substring exact match (T6). The paper gives no formulas; each docstring states the one used."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

from golong.rewards.extract import CJK_RANGES, Answer, normalize, tokens
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
# matched on a line in any case: `C`, `(c)`, `C.`, `C) Paris`, `(C) Paris`.
_OPTION = re.compile(r"^(?:\((?P<paren>[a-z])\)[.:]?|(?P<bare>[a-z])(?:[.)]|$))\s*(?P<text>.*)$", re.IGNORECASE)
# The option text may not itself start with an option (`(a) (b)`, `a. b.` name two letters).
_SECOND_OPTION = re.compile(r"^(?:\([a-z]\)|[a-z][.)]|[a-z]$)", re.IGNORECASE)
# "The correct answer is (X)", the phrasing of the released GoLongRL `selection` rows. The letter is
# read before lowercasing and must be a capital, so "the correct answer is a cat" names no option.
_PHRASE = re.compile(r"(?i:the\s+correct\s+answer\s+is)\s*:?\s*(?:\(([A-Z])\)|([A-Z])(?=\s*(?:$|[.,;:!)\n])))")
# A gold that is an option letter and nothing else (normalized): `c`, `(c)`, `c.`, `c)`.
_LETTER_GOLD = re.compile(r"^(?:\(([a-z])\)|([a-z])[.)]?)$")
# A second option named after the first. In the verdict sentence of "The correct answer is (C) ...":
# any `(X)`, or a capital letter standing alone after `or`/`and`/`vs`/`,`/`/`/`&` ("(C) or (D)",
# "C or maybe D", "(C), but (D) also fits"). In an option's text on an answer line ("C) Paris"), which
# may itself mention letters ("C. Vitamin D", "C. Both A and B"): an `(X)`, or `X.`/`X)` after such a
# connective ("C) Paris or D) Rome"), or a line ending in "or X" ("C. Paris or D").
_QUALIFIER = r"(?:(?:maybe|possibly|perhaps|also|either)\s+)?"
_CONNECTIVE = r"(?:\b(?:or|and|vs)\b\.?|[,/&+])\s*" + _QUALIFIER
_HEDGE_VERDICT = re.compile(rf"(?<!\w)\([A-Za-z]\)|{_CONNECTIVE}\(?[A-Z](?![\w'’-])")
_HEDGE_OPTION_TEXT = re.compile(rf"(?<!\w)\([A-Za-z]\)|{_CONNECTIVE}[A-Z][.)](?=\s|$)|\bor\s+{_QUALIFIER}[A-Z]$")
_CLAUSE_END = re.compile(r"[.;!?\n]")
_LEADING_CONNECTIVE = re.compile(r"^(?:or|and|maybe|possibly|perhaps|also)\s+", re.IGNORECASE)


def option_letter(line: str) -> str | None:
    """The option letter (lowercase) a line names by itself, or None: no option, several options
    (`(A) (B)`, `A. B.`), or a second option named after the first (`(C) or (D)`, `C) Paris or D) Rome`)."""
    line = " ".join(unicodedata.normalize("NFKC", line).replace("*", "").split())  # bold is not part of it
    m = _OPTION.match(line)
    if m is None or _SECOND_OPTION.match(m["text"]) or _HEDGE_OPTION_TEXT.search(m["text"]):
        return None
    return (m["paren"] or m["bare"]).lower()


def gold_letter(gold: list[str]) -> str | None:
    """The option letter of a multiple-choice gold, or None for a free-text gold.

    A gold is an option letter only when it is one: `C`, `(C)`, `C.`, `C)`, or a gold that starts
    with the released phrasing "The correct answer is (C)". `E. coli`, `J. Smith` and
    `(B) The second contract` are free text (issue 15)."""
    first = gold[0].replace("*", "")
    m = _PHRASE.match(first.strip())
    if m:
        return (m[1] or m[2]).lower()
    m = _LETTER_GOLD.match(normalize(first))
    return (m[1] or m[2]) if m else None


def phrased_answer(area: str) -> str | None:
    """The letter (lowercase) the answer's "The correct answer is (X)" verdicts name; None without a
    verdict, "" when they name several (two verdicts that disagree, or a verdict sentence that names
    a second option: "(C) or (D)"). Linear time: no slicing per verdict."""
    text = area.replace("*", "")
    letters = set()
    for m in _PHRASE.finditer(text):
        end = _CLAUSE_END.search(text, m.end())
        if _HEDGE_VERDICT.search(text, m.end(), end.start() if end else len(text)):
            return ""
        letters.add((m[1] or m[2]).lower())
    if not letters:
        return None
    return letters.pop() if len(letters) == 1 else ""


def lined_answer(area: str) -> str | None:
    """The letter an answer names on its first line (`C`, `(C)`, `C.`, `C) Paris`), or None: no
    option there, a second option on that line (`(C) or (D)`), or another line that names an
    option by itself (`A\\nC`, `C\\nor D`)."""
    lines = [line for line in area.splitlines() if normalize(line)]
    first = option_letter(lines[0]) if lines else None
    if first is None:
        return None
    for line in lines[1:]:
        other = option_letter(_LEADING_CONNECTIVE.sub("", line.strip()))
        if other is not None and other != first:
            return None
    return first


@register("accuracy")
def multiple_choice_accuracy(answer: Answer, gold, rules: ScoringRules) -> float:
    """T2 (appendix B.4: "output the [Answer] identifier first, then output the answer option letter
    (A/B/C/D), without any additional content"). 1 if the answer names exactly the gold option, else 0.

    Option-letter gold (see `gold_letter`): when the answer says "The correct answer is (X)" (the
    released `selection` phrasing), those phrases decide: they must all name the same letter and no
    verdict sentence may name a second option ("The correct answer is (C) or (D)" scores 0).
    Otherwise the first line of the answer area must be one option (`C`, `(C)`, `C.`, `C) Paris`)
    naming no second one (`(C) or (D)`, `C) Paris or D) Rome`), and no other line may name another
    option by itself, so `ABCD`, `A B`, `C or D`, `(A) (B)` and one letter per line score 0: an
    answer that names more than one option scores 0 however it is phrased.
    Free-text gold (LongBench-Pro Accuracy rows, and golds such as `E. coli`): 1 if the first line
    of the answer area equals a gold item after normalization.
    """
    golds = gold_list(gold, "accuracy")
    if not golds:
        raise ValueError("accuracy: empty gold")
    letter = gold_letter(golds)
    if letter is None:
        lines = answer.lines
        return float(bool(lines) and lines[0] in {normalize(g) for g in golds})
    named = phrased_answer(answer.area)
    if named is None:
        named = lined_answer(answer.area)
    return float(named == letter)


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


# SubEM tokens, after NFKC and lowercasing: a number with its sign and its decimal or thousands
# separators (`-2.2`, `1,500`, `25.00`), a run of letters and digits (`state`, `r1023`), one CJK
# character, or one other symbol (`_`, `%`, `.`). A sign belongs to a number that follows a space or
# bracket ("-2.2%"), not to one inside an identifier ("A1-B2").
_SUBEM_TOKEN = re.compile(
    rf"(?:(?<![^\s(\[])[-+\u2212](?=\d))?[^\W_{CJK_RANGES}]+(?:(?<=\d)[.,](?=\d)[^\W_{CJK_RANGES}]+)*"
    rf"|[{CJK_RANGES}]|\S"
)
_SEPARATOR = "\x00"  # joins tokens for a linear-time search; removed from the text first


def subem_text(text: str) -> str:
    """`text` as SubEM tokenizes it: NFKC, lowercase, the minus sign U+2212 as `-`, no separator."""
    return unicodedata.normalize("NFKC", text).lower().replace(_SEPARATOR, " ").replace("\u2212", "-")


def subem_tokens(text: str) -> list[str]:
    """The SubEM tokens of `text` (see `_SUBEM_TOKEN`)."""
    return _SUBEM_TOKEN.findall(subem_text(text))


def word_count(tokens: list[str]) -> int:
    """Tokens that hold a letter, digit or CJK character (symbols such as `.` and `%` do not count)."""
    return sum(1 for t in tokens if not (len(t) == 1 and not t.isalnum()))


@register("subem")
def substring_match(answer: Answer, gold, rules: ScoringRules) -> float:
    """T6 (appendix B.8: cluster proportions "Cluster_A 25.00%", an induced fixed value "support", a
    transformed snippet; "output the [Answer] identifier first, then output the answer, without any
    additional content"). Score = (gold items found in the answer area) / (number of gold items),
    times the anti-enumeration factor min(1, ratio * W_gold / W_answer).

    A gold item is found only as a whole token sequence of the answer (see `_SUBEM_TOKEN`): "15" is
    found in "15", "15." and "15 units" but not in "150", "115", "1,500" or "-15"; "support" not in
    "unsupported"; "state_3" not in "state_13". CJK text is matched per character.

    W_gold is the number of word tokens (tokens with a letter, digit or CJK character) of all gold
    items, W_answer that of the answer area, ratio = `subem_length_ratio` (default 1). Without the
    factor, an answer listing every candidate would collect every item; with it, an answer with n
    times the gold's words keeps 1/n of its credit, so listing n candidates earns what guessing one of
    them earns on average. An answer no longer than the gold is not penalised, and punctuation around
    a right answer ("15.") costs nothing. An answer that finds no gold item scores 0, so no wrong
    answer ever outranks a right one.
    """
    items = [t for t in (subem_tokens(g) for g in gold_list(gold, "subem")) if t]
    if not items:
        raise ValueError("subem: empty gold")
    folded = subem_text(answer.area)
    if not any(all(t in folded for t in item) for item in items):
        return 0.0  # some token of every item is not even a substring: nothing to find (no tokenizing)
    answer_tokens = _SUBEM_TOKEN.findall(folded)
    haystack = _SEPARATOR + _SEPARATOR.join(answer_tokens) + _SEPARATOR
    found = sum(_SEPARATOR + _SEPARATOR.join(item) + _SEPARATOR in haystack for item in items)
    gold_words = max(1, sum(word_count(item) for item in items))
    answer_words = max(1, word_count(answer_tokens))
    return found / len(items) * min(1.0, rules.subem_length_ratio * gold_words / answer_words)
