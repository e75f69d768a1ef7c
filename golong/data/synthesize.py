"""QA synthesis from real documents (paper section 3.4, P3 synthetic track; prompts of appendix B).

    golong data synthesize --docs DOCS.jsonl --subtask T2-a --model NAME --out QA.jsonl

Each document (a JSONL/parquet row with `id` and `text`, or `context`) is sent with the appendix B.1
shared instruction wrapped around one subtask prompt (B.3-B.11, package data in
golong/data/synth_prompts/, or the user's own file) to a synthesis model chosen by the document's
length (synth_jobs). B.1 fixes no reply layout, so golong appends one (reply_format_generate.txt): a
JSON object with three questions, each with its answer, rationale and solution.

Each question becomes a native row (golong/data/schema.py): `id` = DOC-SUBTASK-qK (unique across
subtasks, so files merge), `task`, `subtask`, `reward_type` (by task, Table 1), `context` = the
document, `question` (with its options A, B, ... on the following lines for multiple choice), `answer`
in the shape its reward reads (ANSWER_FORMS), `instruction` (the subtask's own output-format
wording), `source`, `doc_id`, `rationale`, `solution`, `options` (multiple choice) and `synthesis`
(model, prompt file, language). A question is kept only if the row
passes golong's schema check and its reward scores the reference answer, written as a perfect
response, 1.0. Everything else (a reply that is not JSON, a missing field, fewer than four options,
an answer letter that is not an option, ...) goes to the rejects file with the reason.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any

from golong.configlib import UsageError
from golong.data.synth_jobs import (
    LLMOptions,
    Reply,
    ResumableOutput,
    UnitResult,
    common_summary,
    rows_with_unique_ids,
    run_llm_job,
    strip_reasoning,
)

QUESTIONS_PER_DOCUMENT = 3  # appendix B.1: "create three questions"
MIN_OPTIONS = 4  # appendix B.1: "at least four options"

# One prompt per subtask of appendix B (T1 and T5 have one prompt each).
SUBTASKS = ("T1", "T2-a", "T2-b", "T2-c", "T2-d", *(f"T3-{c}" for c in "abcdefgh"), "T4-a", "T4-b", "T4-c",
            "T5", "T6-a", "T6-b", "T6-c", "T7-a", "T7-b", "T8-a", "T8-b", "T8-c", "T9-a", "T9-b")

# What the reply's "answer" must hold, by reward type: filled into reply_format_generate.txt's {Answer_Form}.
# Each form is what golong.rewards reads as that reward's ground truth (schema.ANSWER_SHAPES).
ANSWER_FORMS: dict[str, str] = {
    "em": 'The "answer" is the exact short answer span as a string. Leave out "options".',
    "accuracy": ('Every question is multiple choice: "options" maps the letters A, B, C, D (more if needed) to '
                 'the option texts, and "answer" is the letter of the correct option, e.g. "C".'),
    "f1": 'The "answer" is a list of strings, one per answer line. Leave out "options".',
    "math_verify": ('The "answer" is a list of strings, one per computed value (a number, a percentage or an '
                    'expression), in the order asked. Leave out "options".'),
    "iou": ('The "answer" is a JSON object {"columns": ["col1", ...], "data": [["val1", ...], ...]}: one list '
            'per result row, in column order. Leave out "options".'),
    "subem": ('The "answer" is the answer string, or a list of strings that must all appear in a correct '
              'answer. Leave out "options".'),
    "ndcg": 'The "answer" is the list of item IDs, most relevant first. Leave out "options".',
    "pairwise": 'The "answer" is the list of items in the correct order. Leave out "options".',
    "rouge_l": 'The "answer" is the reference summary as a string. Leave out "options".',
}


# ----------------------------------------------------------------------------------------------
# Prompts


def read_prompt(name_or_path: str) -> tuple[str, str]:
    """(text without its '#' header lines, where it came from) of a packaged prompt or a user's file."""
    if os.sep in name_or_path or "." in os.path.basename(name_or_path):  # a path, not a packaged name
        if not os.path.isfile(name_or_path):
            raise UsageError(f"prompt file {name_or_path} not found")
        with open(name_or_path, encoding="utf-8") as f:
            text, origin = f.read(), name_or_path
    else:
        file = resources.files("golong.data").joinpath("synth_prompts").joinpath(f"{name_or_path}.txt")
        if not file.is_file():
            raise UsageError(f"no prompt {name_or_path!r}: give a file path, or one of the packaged subtasks "
                             f"{', '.join(SUBTASKS)}")
        text, origin = file.read_text(encoding="utf-8"), f"golong/data/synth_prompts/{name_or_path}.txt"
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).strip() + "\n", origin


def fill(template: str, values: dict[str, str]) -> str:
    """Replace each `{Name}` placeholder once, left to right, so braces inside the values (documents,
    JSON) are never read as placeholders."""
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in values))
    return pattern.sub(lambda m: values[m[0][1:-1]], template)


@dataclass
class SubtaskPrompt:
    """One appendix B subtask prompt, split into B.1's two slots, plus the row instruction it implies."""

    name: str  # e.g. "T2-a"
    task: str  # "T1".."T9"
    primary: str  # the text after "Primary Task:", up to "Secondary Task:"
    secondary: str  # the rest: definition, context requirement, metric, instruction, output format
    instruction: str  # the subtask's Instruction and Output format sentences, without the example answer
    origin: str


def _row_instruction(secondary: str) -> str:
    """The 'Instruction:' and 'Output format:' paragraphs of a subtask prompt, cut before its example
    answer (a line that is just `[Answer]`, or a code fence): the format the trained model is asked for."""
    start = min((i for i in (secondary.find("Instruction:"), secondary.find("Output format:")) if i >= 0), default=-1)
    if start < 0:
        return ""
    kept = []
    for line in secondary[start:].splitlines():
        if line.strip() in ("[Answer]", "[答案]") or line.strip().startswith("```"):
            break
        if line.strip() not in ("Instruction:", "Output format:"):
            kept.append(line.strip())
    return "\n".join(line for line in kept if line).strip()


def load_subtask(subtask: str | None, task: str | None, prompt_file: str | None) -> SubtaskPrompt:
    """The prompt of `--subtask` (or `--task` when it has one prompt), or the user's `--prompt FILE`."""
    from golong.data.schema import TASKS

    if subtask is None and task is None:
        raise UsageError("give --subtask (e.g. T2-a; all of them are in golong/data/synth_prompts/), or --task "
                         "with your own --prompt FILE")
    if prompt_file is None:
        if subtask is None:
            choices = [s for s in SUBTASKS if s.split("-")[0] == task]
            if len(choices) != 1:
                raise UsageError(f"--subtask: task {task} has several prompts; choose one of {', '.join(choices)}"
                                 if choices else f"--task: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
            subtask = choices[0]
        elif subtask not in SUBTASKS:
            raise UsageError(f"--subtask: unknown subtask {subtask!r}; choose one of {', '.join(SUBTASKS)} "
                             f"or give your own prompt with --prompt FILE")
    name = subtask or os.path.splitext(os.path.basename(prompt_file))[0]
    task = task or name.split("-")[0]
    if task not in TASKS:
        raise UsageError(f"--task: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    text, origin = read_prompt(prompt_file or subtask)
    head, sep, secondary = text.partition("Secondary Task:")
    if not sep or "Primary Task:" not in head:
        raise UsageError(f"{origin}: a subtask prompt needs a 'Primary Task:' and then a 'Secondary Task:' "
                         f"section (appendix B layout)")
    primary = head.split("Primary Task:", 1)[1].strip()
    return SubtaskPrompt(name=name, task=task, primary=primary, secondary=secondary.strip(),
                         instruction=_row_instruction(secondary), origin=origin)


def generation_prompt(document: str, sub: SubtaskPrompt, reward_type: str, shared: str, reply_format: str) -> str:
    """B.1 around the subtask prompt, with golong's reply format for this reward type."""
    reply = fill(reply_format, {"Answer_Form": ANSWER_FORMS.get(reward_type, 'The "answer" is a string.')})
    return fill(shared, {"Reply_Format": reply.strip(), "Long_Context": document,
                         "Primary_Task": sub.primary, "Secondary_Task": sub.secondary})


# ----------------------------------------------------------------------------------------------
# Parsing a reply into rows


class Malformed(ValueError):
    """A generated question that cannot become a row; the message is the reason recorded."""


def reply_json(text: str) -> dict:
    """The JSON object of a reply: after any reasoning block, inside a ```json fence or from the first
    `{` to the last `}`. Raises Malformed with what is wrong."""
    body = strip_reasoning(text).strip()
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", body, re.DOTALL)
    if fenced:
        body = fenced[1]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise Malformed("the reply holds no JSON object")
    try:
        obj = json.loads(body[start:end + 1])
    except json.JSONDecodeError as e:
        raise Malformed(f"the reply's JSON does not parse: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("questions"), list):
        raise Malformed('the reply\'s JSON has no "questions" list')
    return obj


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Malformed(f"expected text, got {type(value).__name__} {str(value)[:60]!r}")
    return str(value).strip()


def _text_list(value: Any) -> list[str]:
    """A list of non-empty strings, from a list or from the lines of a string."""
    items = value.splitlines() if isinstance(value, str) else value
    if not isinstance(items, list):
        raise Malformed(f"expected a list, got {type(value).__name__}")
    items = [_text(v) for v in items]
    items = [v for v in items if v]
    if not items:
        raise Malformed("the answer list is empty")
    return items


_LETTER = re.compile(r"^\(?([A-Za-z])\)?(?:[.):]\s*.*)?$", re.DOTALL)


def normalize_options(value: Any) -> dict[str, str]:
    """Options as {"A": text, ...}: from a dict, or a list of texts (with or without an `A.` prefix)."""
    if isinstance(value, dict):
        options = {_text(k).strip("().").upper(): _text(v) for k, v in value.items()}
    elif isinstance(value, list):
        options = {}
        for i, item in enumerate(value):
            item = _text(item)
            m = re.match(r"^\(?([A-Za-z])[.):]\s*(.+)$", item, re.DOTALL)
            letter, text = (m[1].upper(), m[2].strip()) if m else (chr(ord("A") + i), item)
            options[letter] = text
    else:
        raise Malformed('a multiple-choice question needs "options" (letters to texts)')
    if len(options) < MIN_OPTIONS:
        raise Malformed(f"a multiple-choice question needs at least {MIN_OPTIONS} options (appendix B.1), "
                        f"got {len(options)}")
    if any(len(k) != 1 or not k.isalpha() for k in options) or not all(options.values()):
        raise Malformed(f"options must be single letters with non-empty texts, got {sorted(options)}")
    return dict(sorted(options.items()))


def option_answer(value: Any, options: dict[str, str]) -> str:
    """The option letter an answer names: `C`, `(C)`, `C. text`, or an option's exact text."""
    text = _text(value)
    m = _LETTER.match(text)
    letter = m[1].upper() if m else next((k for k, v in options.items() if v.strip() == text), None)
    if letter is None or letter not in options:
        raise Malformed(f"the answer {text[:40]!r} names none of the options {', '.join(options)}")
    return letter


def _table(value: Any) -> dict:
    """An iou answer {"columns": [...], "data": [[...], ...]}; rows given as objects become lists in column order."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Malformed("an iou answer must be a JSON object with columns and data") from None
    if not (isinstance(value, dict) and isinstance(value.get("columns"), list) and isinstance(value.get("data"), list)):
        raise Malformed('an iou answer must be {"columns": [...], "data": [[...], ...]}')
    columns = value["columns"]
    data = [[row.get(c) for c in columns] if isinstance(row, dict) else row for row in value["data"]]
    if not all(isinstance(row, list) for row in data):
        raise Malformed("every iou data row must be a list of values (or an object keyed by column)")
    return {"columns": columns, "data": data}


def normalize_answer(reward_type: str, value: Any, options: dict[str, str] | None) -> Any:
    """The answer in the shape reward `reward_type` reads (schema.ANSWER_SHAPES); Malformed otherwise."""
    if value is None or value == "" or value == []:
        raise Malformed('missing "answer"')
    if reward_type == "accuracy":
        return option_answer(value, options or {})
    if reward_type == "iou":
        return _table(value)
    if reward_type in ("f1", "ndcg", "pairwise"):
        return _text_list(value)
    if reward_type in ("math_verify", "subem", "em"):
        items = _text_list(value) if isinstance(value, list) else [_text(value)]
        return items[0] if len(items) == 1 else items
    return _text(value)  # rouge_l and user-registered types: a string


def ideal_response(reward_type: str, answer: Any) -> str:
    """The response a perfect model would give: what the row's reward must score 1.0."""
    if reward_type == "iou":
        return f"<answer>{json.dumps(answer, ensure_ascii=False)}</answer>"
    if isinstance(answer, list):
        body = answer[0] if reward_type == "em" else "\n".join(answer)
    else:
        body = str(answer)
    return f"[Answer]\n{body}"


def question_row(q: Any, k: int, doc: dict, sub: SubtaskPrompt, reward_type: str, model: str, language: Any) -> dict:
    """Question k (1-based) of a reply as a native row; Malformed if it cannot be one."""
    if not isinstance(q, dict):
        raise Malformed(f"a question must be a JSON object, got {type(q).__name__}")
    stem = _text(q.get("question") or "")
    if not stem:
        raise Malformed('missing "question"')
    options = normalize_options(q.get("options")) if reward_type == "accuracy" else None
    answer = normalize_answer(reward_type, q.get("answer"), options)
    question = stem + ("\n" + "\n".join(f"{k_}. {v}" for k_, v in options.items()) if options else "")
    row = {
        "id": f"{doc['id']}-{sub.name}-q{k}", "task": sub.task, "subtask": sub.name, "reward_type": reward_type,
        "context": doc["text"], "question": question, "answer": answer, "source": doc["source"],
        "doc_id": doc["id"], "rationale": _text(q.get("rationale") or ""), "solution": _text(q.get("solution") or ""),
        "synthesis": {"model": model, "prompt": sub.origin, "language": language},
    }
    if sub.instruction:
        row["instruction"] = sub.instruction
    if options:
        row["options"] = options
    return row


def check_row(row: dict, out_path: str) -> None:
    """The row must pass golong's schema check and its reward must score the reference answer 1.0."""
    from golong.data.schema import DataError, example_from_native
    from golong.rewards import compute_score

    try:
        example = example_from_native(row, out_path, 0)
    except DataError as e:
        raise Malformed(f"not a valid native row: field `{e.field}`: {e.reason}") from None
    score = compute_score(example.reward_type, ideal_response(example.reward_type, row["answer"]), example.ground_truth)
    if score != 1.0:
        raise Malformed(f"the {example.reward_type} reward scores the reference answer itself {score:.3f}, not 1.0")


def parse_reply(text: str, doc: dict, sub: SubtaskPrompt, reward_type: str, model: str, out_path: str):
    """(rows, rejects, counts) of one reply. Every question is either a row or a reject with its reason."""
    counts: Counter = Counter()
    base = {"doc_id": doc["id"], "subtask": sub.name, "model": model}
    try:
        obj = reply_json(text)
    except Malformed as e:
        counts["replies_unparseable"] += 1
        return [], [{**base, "stage": "reply", "reason": str(e), "reply": text}], counts
    rows, rejects = [], []
    for k, q in enumerate(obj["questions"], start=1):
        counts["generated"] += 1
        try:
            row = question_row(q, k, doc, sub, reward_type, model, obj.get("language"))
            check_row(row, out_path)
        except Malformed as e:
            counts["malformed"] += 1
            rejects.append({**base, "stage": "question", "question_index": k, "reason": str(e), "generated": q})
            continue
        counts["parsed"] += 1
        rows.append(row)
    if len(obj["questions"]) != QUESTIONS_PER_DOCUMENT:
        counts["replies_wrong_count"] += 1
    return rows, rejects, counts


# ----------------------------------------------------------------------------------------------
# The command


def read_documents(path: str, text_field: str):
    """Yield (id, {"id", "text", "source"}) per document; a row without its text is a DataError."""
    from golong.data.schema import DataError

    for row_no, doc_id, row in rows_with_unique_ids(path, lambda no, row: str(row.get("id", no)), "document",
                                                    "resuming needs them"):
        text = row.get(text_field, row.get("context") if text_field == "text" else None)
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, row_no, text_field, "missing or empty document text (use --text-field to name it)")
        yield doc_id, {"id": doc_id, "text": text, "source": str(row.get("source") or os.path.basename(path))}


@dataclass
class SynthesisRun:
    counts: Counter
    output: ResumableOutput

    def summary_lines(self) -> list[str]:
        c = self.counts
        lines = common_summary(c, self.output, "documents")
        lines.append(
            f"questions: {c['generated']} generated, {c['parsed']} parsed into rows, {c['malformed']} malformed; "
            f"{c['replies_unparseable']} replies unparseable (no questions read), {c['replies_truncated']} cut at "
            f"--max-tokens, {c['replies_wrong_count']} without exactly {QUESTIONS_PER_DOCUMENT} questions")
        lines.append(f"rows written to {self.output.out}; rejects with their reason in {self.output.rejects}")
        return lines


def synthesize(docs: str, out: str, rejects: str, sub: SubtaskPrompt, opts: LLMOptions, *, text_field: str = "text",
               shared_prompt: str = "B1_shared_instruction", limit: int | None = None,
               progress: bool = True) -> SynthesisRun:
    from golong.rewards import TASK_TO_REWARD

    reward_type = TASK_TO_REWARD[sub.task]
    shared, _ = read_prompt(shared_prompt)
    reply_format, _ = read_prompt("reply_format_generate")
    output = ResumableOutput(out, rejects, key="doc_id", job={"subtask": sub.name})

    def handle(doc: dict, model: str, reply: Reply) -> UnitResult:
        rows, rejected, counts = parse_reply(reply.text, doc, sub, reward_type, model, out)
        return UnitResult(rows, rejected, counts)

    total = sum(1 for _ in read_documents(docs, text_field))  # every row checked before the first request
    counts = run_llm_job(
        opts, output, read_documents(docs, text_field), text_of=lambda doc: doc["text"],
        prompt_of=lambda doc: generation_prompt(doc["text"], sub, reward_type, shared, reply_format),
        handle=handle, limit=limit, total=total, progress=progress, desc="documents")
    return SynthesisRun(counts=counts, output=output)


def default_rejects(out: str) -> str:
    root, _ = os.path.splitext(out)
    return root + ".rejects.jsonl"
