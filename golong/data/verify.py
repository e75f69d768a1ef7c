"""QA-pair verification (paper section 3.4, P3 first quality stage; the prompt of appendix B.2).

    golong data verify --qa QA.jsonl --model NAME --out VERIFIED.jsonl

Each row (the output of `golong data synthesize`, or any native row with a `context`) is sent with its
full source document to a verifier model (the paper: Gemini-2.5-Pro), which runs B.2's five checks
and answers `Verdict -- PASS` or `Verdict -- REJECT` with the failed checks. PASS rows are written
unchanged plus a `verification` field; REJECT rows go to the rejects file with the failed checks and the
verifier's explanation, and so does a reply without a readable verdict (never counted as a PASS).
The PASS rows go on to `golong data calibrate` (the second stage) and `golong data decontaminate`.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

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
from golong.data.synthesize import fill, read_prompt

# Appendix B.2's five checks, by number.
CHECKS = {
    1: "Answer Uniqueness",
    2: "Distractor Quality",
    3: "Hallucination Detection",
    4: "Task Compliance",
    5: "Language and Format Consistency",
}
_NAMES = {1: ("answer uniqueness",), 2: ("distractor quality",), 3: ("hallucination",),
          4: ("task compliance",), 5: ("language and format consistency", "format consistency")}
_VERDICT = re.compile(r"verdict\W{0,12}(pass|reject)\b", re.IGNORECASE)
_CHECK_NUMBER = re.compile(r"check\s*(?:no\.?\s*|#\s*)?([1-5])\b", re.IGNORECASE)


@dataclass
class Verdict:
    verdict: str | None  # "PASS", "REJECT", or None when the reply names neither
    failed_checks: list[str]  # CHECKS names, in check order; ["unspecified"] for a REJECT naming none
    explanation: str  # the reply after its reasoning block


def parse_verdict(text: str) -> Verdict:
    """B.2's `Verdict -- PASS|REJECT` and, for REJECT, which of the five checks failed (by number or name)."""
    body = strip_reasoning(text).strip()
    m = _VERDICT.search(body)
    if m:
        verdict, rest = m[1].upper(), body[m.end():]
    else:  # no "Verdict" label: accept a reply that uses exactly one of the two words, in capitals
        words = set(re.findall(r"\b(PASS|REJECT)\b", body))
        verdict, rest = (words.pop(), body) if len(words) == 1 else (None, body)
    failed: list[str] = []
    if verdict == "REJECT":
        lowered = rest.lower()
        numbers = {int(n) for n in _CHECK_NUMBER.findall(rest)}
        numbers |= {n for n, names in _NAMES.items() if any(name in lowered for name in names)}
        failed = [CHECKS[n] for n in sorted(numbers)] or ["unspecified"]
    return Verdict(verdict=verdict, failed_checks=failed, explanation=body)


def _answer_text(row: dict) -> str:
    answer, options = row.get("answer"), row.get("options")
    if isinstance(options, dict) and isinstance(answer, str) and answer in options:
        return f"{answer}. {options[answer]}"
    if isinstance(answer, list):
        return "\n".join(str(a) for a in answer)
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)


def _question_stem(row: dict) -> str:
    """The question without the option lines synthesize appends (the options are B.2's own slot)."""
    question, options = row["question"], row.get("options")
    if isinstance(options, dict):
        block = "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
        if question.endswith(block):
            return question[: -len(block)]
    return question


def verification_prompt(row: dict, template: str, reply_format: str) -> str:
    """B.2 filled with one row: its document, question, options, answer and rationale."""
    options = row.get("options")
    option_lines = ("\n".join(f"{k}. {v}" for k, v in options.items()) if isinstance(options, dict)
                    else "(none: not a multiple-choice question)")
    rationale = "\n\n".join(str(row[k]) for k in ("rationale", "solution") if row.get(k)) or "(none given)"
    return fill(template, {"Reply_Format": reply_format.strip(), "Source_Document": row["context"],
                           "Question": _question_stem(row), "Options": option_lines,
                           "Correct_Answer": _answer_text(row), "Solution_Rationale": rationale})


def read_qa(path: str):
    """Yield (id, row) per QA row; a row without id, context, question or answer is a DataError."""
    from golong.data.schema import DataError

    def id_of(row_no: int, row: dict) -> str:
        for name in ("id", "context", "question", "answer"):
            if row.get(name) is None:
                raise DataError(path, row_no, name, "missing (verify reads native QA rows)")
        return str(row["id"])

    for _, row_id, row in rows_with_unique_ids(path, id_of, "row", "resuming relies on them"):
        yield row_id, row


@dataclass
class VerificationRun:
    counts: Counter
    output: ResumableOutput

    def summary_lines(self) -> list[str]:
        c = self.counts
        lines = common_summary(c, self.output, "rows")
        by_check = ", ".join(f"{name} {c['failed:' + name]}" for name in [*CHECKS.values(), "unspecified"]
                             if c["failed:" + name])
        lines.append(f"verdicts: PASS {c['pass']}, REJECT {c['reject']}"
                     + (f" (failed checks: {by_check})" if by_check else "")
                     + f", no readable verdict {c['verdict_unparsed']} (dropped, kept in the rejects file)")
        lines.append(f"PASS rows written to {self.output.out}; rejected ones in {self.output.rejects}")
        return lines


def verify(qa: str, out: str, rejects: str, opts: LLMOptions, *, prompt: str = "B2_verify",
           limit: int | None = None, progress: bool = True) -> VerificationRun:
    template, _ = read_prompt(prompt)
    reply_format, _ = read_prompt("reply_format_verify")
    output = ResumableOutput(out, rejects, key="id")

    def handle(row: dict, model: str, reply: Reply) -> UnitResult:
        counts: Counter = Counter()
        v = parse_verdict(reply.text)
        if v.verdict == "PASS":
            counts["pass"] += 1
            return UnitResult([{**row, "verification": {"verdict": "PASS", "model": model}}], [], counts)
        if v.verdict == "REJECT":
            counts["reject"] += 1
            counts.update("failed:" + name for name in v.failed_checks)
            reason = "REJECT: " + ", ".join(v.failed_checks)
        else:
            counts["verdict_unparsed"] += 1
            reason = "no verdict (PASS or REJECT) found in the verifier's reply"
        brief = {key: value for key, value in row.items() if key != "context"}  # rejects stay readable: no document
        reject = {**brief, "stage": "verdict", "model": model, "verdict": v.verdict,
                  "failed_checks": v.failed_checks if v.verdict else [], "reason": reason, "reply": v.explanation}
        return UnitResult([], [reject], counts)

    total = sum(1 for _ in read_qa(qa))  # every row checked before the first request
    counts = run_llm_job(
        opts, output, read_qa(qa), text_of=lambda row: row["context"],
        prompt_of=lambda row: verification_prompt(row, template, reply_format),
        handle=handle, limit=limit, total=total, progress=progress, desc="rows")
    return VerificationRun(counts=counts, output=output)
