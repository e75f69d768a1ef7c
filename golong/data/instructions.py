"""The output-format instruction appended to every native row's prompt (paper appendix B).

Appendix B gives one output format per subtask; they all start the answer with an `[Answer]`
identifier, which is what golong.rewards reads. A native row names only its task and reward type,
so the instruction is chosen by reward type: the reward decides how the answer is parsed (one
letter, one line per item, JSON between `<answer>` tags, free text), so that is what the
instruction must ask for. A row with its own `instruction` field (a subtask's exact wording from
appendix B, say) uses that instead.
"""
from __future__ import annotations

_FIRST = 'Output the "[Answer]" identifier first, then output '
_LAST = ", without any additional content."

OUTPUT_FORMATS: dict[str, str] = {
    "em": _FIRST + "the answer" + _LAST,  # B.3 / B.8.3
    "accuracy": _FIRST + "the answer option letter (A/B/C/D)" + _LAST,  # B.4.1
    "f1": _FIRST + "the answer items line by line" + _LAST,  # B.5
    "math_verify": _FIRST + "the computed values line by line" + _LAST,  # B.6.2
    "iou": (  # B.7
        "Output the final answer strictly between <answer> and </answer> tags. The answer must be a valid "
        'JSON object: {"columns": ["col1", ...], "data": [["val1", ...], ...]}. If the answer cannot be '
        'inferred from the provided tables, output: <answer>{"columns": [], "data": []}</answer>'
    ),
    "subem": _FIRST + "the answer" + _LAST,  # B.8.3
    "ndcg": _FIRST + "the IDs in the required sorted order line by line" + _LAST,  # B.9
    "pairwise": _FIRST + "the items in the correct order line by line" + _LAST,  # B.10
    "rouge_l": _FIRST + "the summary" + _LAST,  # B.11
}


def user_turn(context: str, question: str, instruction: str) -> str:
    """The single user message of a native row: the long context, the question, then the format."""
    return f"{context}\n\n{question}\n\n{instruction}"
