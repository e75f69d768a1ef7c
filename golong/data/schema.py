"""What one training example is, and how a row of either supported format becomes one.

Two row formats (both JSONL or parquet):

- native rows: `{"id", "task" (T1..T9), "context", "question", "answer", "reward_type"?, "source"?,
  "instruction"?}`. The prompt is one user turn: context, question, and the output-format
  instruction of the row's reward type (golong/data/instructions.py). `reward_type` defaults by
  task (paper Table 1: T1 em ... T9 rouge_l). `answer` must have the shape its reward reads
  (ANSWER_SHAPES below).
- released GoLongRL records (verl format): `prompt` (chat list), `data_source`,
  `reward_model.ground_truth`, `extra_info.reward_mode`. The prompt is used as it is; the reward
  type and ground truth come from `golong.rewards.route_released`, and the task from the reward
  type (one task per reward type, Table 1).

Every check names the file, the row number (1-based: the line number in a JSONL file, the row
position in a parquet file) and the field, so a bad dataset is reported before training starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from golong.data.instructions import OUTPUT_FORMATS, user_turn
from golong.rewards import REWARD_TO_TASK, TASK_TO_REWARD, route_released, validate_reward_type

TASKS = tuple(TASK_TO_REWARD)  # T1..T9; paper Table 1 pairs each with its natural metric as reward

# What a native row's `answer` may be, per reward type (the ground truth golong.rewards reads).
ANSWER_SHAPES: dict[str, tuple[str, ...]] = {
    "em": ("str", "list"),  # a list holds several accepted answers
    "accuracy": ("str", "list"),  # the option letter (`C` or `(C)`), or free-text answers
    "f1": ("str", "list"),  # a list is a set of items; a string is scored by token F1
    "math_verify": ("str", "number", "list"),  # several lines (or list items) are scored line by line
    "iou": ("str", "dict"),  # {"columns": [...], "data": [[...], ...]}, or that as a JSON string
    "subem": ("str", "list"),  # the items that must appear in the answer
    "ndcg": ("list",),  # gold items, most relevant first
    "pairwise": ("list",),  # gold items in the correct order
    "rouge_l": ("str", "list"),  # the reference summary, or several (the best one counts)
}


class DataError(ValueError):
    """A dataset row is malformed; the message names the file, row, field and what is wrong."""

    def __init__(self, file: str, row: int, field: str, reason: str):
        self.file, self.row, self.field, self.reason = file, row, field, reason
        super().__init__(f"{file}: row {row}: field `{field}`: {reason}")


@dataclass
class Example:
    """One prompt of the dataset, ready to be templated, rolled out and scored."""

    id: str
    task: str  # "T1".."T9"
    reward_type: str  # one of golong.rewards' types
    ground_truth: Any  # what golong.rewards.compute_score(reward_type, response, ground_truth) reads
    messages: list[dict]  # chat turns [{"role": ..., "content": ...}], without the assistant's answer
    source: str  # where the row came from (native `source`, released `data_source`)
    file: str  # the file and 1-based row it was read from, for error messages and reports
    row: int


def _shape(value: Any) -> str:
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def _text_field(row: dict, name: str, file: str, row_no: int, required: bool = True) -> str | None:
    if name not in row or row[name] is None:
        if required:
            raise DataError(file, row_no, name, "missing")
        return None
    value = row[name]
    if not isinstance(value, str):
        raise DataError(file, row_no, name, f"expected a string, got {_shape(value)} {str(value)[:40]!r}")
    return value


def _check_reward_type(reward_type: str, file: str, row_no: int, field: str) -> None:
    try:
        validate_reward_type(reward_type)
    except ValueError as e:  # the message lists the known types
        raise DataError(file, row_no, field, str(e)) from None


def _native_answer(answer: Any, reward_type: str, file: str, row_no: int) -> Any:
    """The ground truth of a native row, checked against ANSWER_SHAPES; a user-registered reward
    type's answer is passed on as it is."""
    if reward_type not in ANSWER_SHAPES:
        return answer
    shape = _shape(answer)
    allowed = ANSWER_SHAPES[reward_type]
    if shape not in allowed:
        raise DataError(file, row_no, "answer", f"a `{reward_type}` answer must be {' or '.join(allowed)}, got {shape}")
    if shape == "list" and (not answer or not all(isinstance(a, str) for a in answer)):
        raise DataError(file, row_no, "answer", "must be a non-empty list of strings")
    if shape == "dict" and not (isinstance(answer.get("columns"), list) and isinstance(answer.get("data"), list)):
        raise DataError(file, row_no, "answer", 'an iou answer must be {"columns": [...], "data": [...]}')
    if shape == "number":
        return repr(answer) if isinstance(answer, float) else str(answer)
    return answer


def example_from_native(row: dict, file: str, row_no: int) -> Example:
    """A native row -> Example, or DataError naming the first bad field."""
    raw_id = row.get("id")
    if raw_id is None:
        raise DataError(file, row_no, "id", "missing")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise DataError(file, row_no, "id", f"expected a string or an integer, got {_shape(raw_id)}")
    task = _text_field(row, "task", file, row_no)
    if task not in TASK_TO_REWARD:
        raise DataError(file, row_no, "task", f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    context = _text_field(row, "context", file, row_no)
    question = _text_field(row, "question", file, row_no)
    reward_type = _text_field(row, "reward_type", file, row_no, required=False) or TASK_TO_REWARD[task]
    _check_reward_type(reward_type, file, row_no, "reward_type")
    if "answer" not in row or row["answer"] is None:
        raise DataError(file, row_no, "answer", "missing")
    ground_truth = _native_answer(row["answer"], reward_type, file, row_no)
    instruction = _text_field(row, "instruction", file, row_no, required=False) or OUTPUT_FORMATS.get(reward_type)
    if instruction is None:
        raise DataError(file, row_no, "instruction", f"required for the user-registered reward type {reward_type!r}")
    source = _text_field(row, "source", file, row_no, required=False) or os.path.basename(file)
    return Example(
        id=str(raw_id), task=task, reward_type=reward_type, ground_truth=ground_truth,
        messages=[{"role": "user", "content": user_turn(context, question, instruction)}],
        source=source, file=file, row=row_no,
    )


def _released_messages(prompt: Any, file: str, row_no: int) -> list[dict]:
    if not isinstance(prompt, list) or not prompt:
        raise DataError(file, row_no, "prompt", f"expected a non-empty list of chat turns, got {_shape(prompt)}")
    for i, turn in enumerate(prompt):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise DataError(file, row_no, f"prompt[{i}]", 'expected {"role": str, "content": str}')
    return [{"role": turn["role"], "content": turn["content"]} for turn in prompt]


def example_from_released(record: dict, file: str, row_no: int) -> Example:
    """A released GoLongRL (verl) record -> Example, routed by golong.rewards.route_released."""
    messages = _released_messages(record.get("prompt"), file, row_no)
    data_source = _text_field(record, "data_source", file, row_no)
    reward_model = record.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise DataError(file, row_no, "reward_model.ground_truth", "missing")
    extra_info = record.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise DataError(file, row_no, "extra_info", f"expected an object, got {_shape(extra_info)}")
    try:
        reward_type, ground_truth = route_released(record)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(file, row_no, "data_source/extra_info.reward_mode/reward_model", str(e)) from None
    _check_reward_type(reward_type, file, row_no, "data_source")
    index = extra_info.get("index")
    return Example(
        id=str(index) if index is not None else f"{os.path.basename(file)}:{row_no}",
        task=REWARD_TO_TASK[reward_type],  # retrieval_calculate (composite) counts as T4
        reward_type=reward_type, ground_truth=ground_truth, messages=messages,
        source=data_source, file=file, row=row_no,
    )


def is_released_record(row: dict) -> bool:
    """Released (verl) records carry a chat `prompt` and a `reward_model`; native rows carry `context`."""
    return "prompt" in row and "reward_model" in row
