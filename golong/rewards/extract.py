"""Answer extraction shared by every reward: the reasoning block, the answer area, normalization, tokens.

Rules (issue 3, "Answer extraction"):
1. Reasoning. With a `</think>` in the response only the text after the last one is scored, so an
   answer written inside the reasoning earns nothing. A `<think>` that is never closed (before the
   last `</think>` or after it) means the reasoning is unfinished: the response scores 0. Thinking
   models whose chat template opens `<think>` in the prompt emit `</think>` but no `<think>`;
   `require_think_close` says whether a response with no `</think>` at all is unfinished too.
2. Answer area. The text after the last `[Answer]` (or `[答案]`) marker of what remains; without a
   marker, all of it. Appendix B asks every task to print the marker first.
3. Normalization. Unicode NFKC, lowercase, strip, collapse internal whitespace. List answers are the
   non-empty lines of the answer area, each normalized.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# `[Answer]`, `[答案]`, any case, ASCII or full-width brackets. The optional `**` and `:` right after the
# marker (`**[Answer]**: Paris`) belong to the marker, not to the answer.
_ANSWER_MARKER = re.compile(r"[\[［]\s*(?:answer|答案)\s*[\]］]\**[ \t]*[:：]?", re.IGNORECASE)


def reasoning_removed(response: str, require_think_close: bool) -> str | None:
    """Rule 1: the text after the reasoning block, or None when the reasoning never finished."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        rest = response[close + len(THINK_CLOSE):]
        return None if THINK_OPEN in rest else rest  # reasoning reopened and never closed
    if require_think_close or THINK_OPEN in response:
        return None
    return response


def answer_area(text: str) -> str:
    """Rule 2: the text after the last answer marker, or all of `text` without one."""
    last = None
    for last in _ANSWER_MARKER.finditer(text):
        pass
    return text[last.end():] if last else text


def last_tagged(text: str, open_tag: str, close_tag: str) -> str | None:
    """The text inside the last `open_tag ... close_tag` pair, or None. Linear time, unlike a lazy
    regex, which rescans to the end of the text for every unclosed tag of a repetitive output."""
    end = text.rfind(close_tag)
    start = text.rfind(open_tag, 0, end) if end >= 0 else -1
    return text[start + len(open_tag):end] if start >= 0 else None


def normalize(text: str) -> str:
    """Rule 3: NFKC, lowercase, strip, collapse internal whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def normalized_lines(text: str) -> list[str]:
    """Rule 3 for list answers: the non-empty lines of `text`, each normalized."""
    lines = (normalize(line) for line in text.splitlines())
    return [line for line in lines if line]


@dataclass(frozen=True)
class Answer:
    """A response as the reward functions see it."""

    text: str  # the response after its reasoning block (rule 1)
    area: str  # the text after the last answer marker in `text` (rule 2)

    @cached_property
    def normalized(self) -> str:
        return normalize(self.area)

    @cached_property
    def lines(self) -> list[str]:
        return normalized_lines(self.area)


# ----------------------------------------------------------------------------------------------
# Tokens (token F1, ROUGE-L)

# Chinese and Japanese are written without spaces between words: each Han, kana or Bopomofo
# character is one token (the usual choice for character-level Chinese ROUGE). Everything else is
# split into runs of letters and digits, as rouge-score does for English (`_` and punctuation
# separate tokens), so English text gets exactly rouge-score's tokens. Hangul is space-separated and
# stays in word runs.
CJK_RANGES = (
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi radicals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f\u31a0-\u31bf"  # Bopomofo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs (+ extension A)
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G
)
_TOKEN = re.compile(rf"[{CJK_RANGES}]|[^\W_{CJK_RANGES}]+")


def tokens(text: str) -> list[str]:
    """Word tokens of `text` after NFKC and lowercasing; each CJK character is its own token."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())
