"""What `golong data synthesize` and `golong data verify` share: the chat endpoint, the model chosen by
document length, and a resumable, bounded-concurrency job loop (paper section 3.4, P3 synthetic track).

- Endpoint: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, a hosted API, a gateway),
  through the `openai` client. The API key is read from an environment variable (`--api-key-env`,
  default GOLONG_SYNTH_API_KEY, then OPENAI_API_KEY); local servers started without a key accept any.
- Retries: the openai client's own, `--max-retries` times with exponential backoff (0.5 s doubling up to
  8 s, with jitter, or the server's `retry-after`/`retry-after-ms`) on 408, 409, 429, every 5xx,
  connection errors and timeouts (`--timeout` seconds per request).
- Length bins: the paper tokenizes each document and sends it to DeepSeek V3.2 when it fits that model's
  window and to Gemini-2.5-Pro otherwise. `--bins "<=100000:modelA,>100000:modelB"`: the first rule whose
  condition holds names the model. Lengths are tokens of `--tokenizer`, else words plus CJK characters.
  A document no rule covers is left for another run (say, against another endpoint) and is not marked done.
- Resumable output: every unit of work (a document, a QA row) ends with one line in the ledger
  `OUT.done`, written after its rows (OUT) and rejects (REJECTS) were flushed to disk. A re-run skips the
  units in the ledger; lines of OUT and REJECTS whose unit has no ledger line (a kill mid-way, a failed
  request) are removed first, so a killed run resumes with no duplicates and nothing lost.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from golong.configlib import UsageError

API_KEY_ENVS = ("GOLONG_SYNTH_API_KEY", "OPENAI_API_KEY")  # read in this order unless --api-key-env names one
_BIN = re.compile(r"^\s*(<=|<|>=|>)\s*(\d+)\s*:\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class LengthBin:
    """One `--bins` rule: documents whose length satisfies `op limit` go to `model`."""

    op: str  # "<=", "<", ">=", ">"
    limit: int  # tokens
    model: str

    def holds(self, length: int) -> bool:
        return {"<=": length <= self.limit, "<": length < self.limit,
                ">=": length >= self.limit, ">": length > self.limit}[self.op]


def parse_bins(spec: str) -> list[LengthBin]:
    """`"<=100000:modelA,>100000:modelB"` -> rules, first match wins; a bad rule is a ValueError naming --bins."""
    rules = []
    for part in spec.split(","):
        m = _BIN.match(part)
        if m is None:
            raise UsageError(f"--bins: cannot read {part.strip()!r}; write rules like "
                             f"'<=100000:modelA,>100000:modelB' (operators <=, <, >=, >; lengths in tokens)")
        rules.append(LengthBin(op=m[1], limit=int(m[2]), model=m[3]))
    return rules


def model_for(length: int, bins: list[LengthBin], default: str | None) -> str | None:
    """The model of the first rule that holds; without rules, `default`; None when no rule holds."""
    if not bins:
        return default
    return next((b.model for b in bins if b.holds(length)), None)


@dataclass
class LLMOptions:
    """How to reach the model; filled from the command line (add_llm_args)."""

    endpoint: str  # base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str | None  # the model for every document, unless `bins` route by length
    bins: list[LengthBin] = field(default_factory=list)
    api_key_env: str | None = None  # environment variable holding the API key (None: API_KEY_ENVS)
    max_retries: int = 5  # per request, on 408/409/429/5xx, connection errors and timeouts
    timeout_s: float = 600.0  # per request attempt
    concurrency: int = 8  # requests in flight at once
    max_tokens: int = 8192  # completion tokens per request
    temperature: float | None = None  # None: the server's default
    tokenizer: str | None = None  # path or name for document lengths (None: words + CJK characters)

    def check(self) -> None:
        if not self.model and not self.bins:
            raise UsageError("give --model NAME, or --bins '<=N:modelA,>N:modelB' to choose a model by length")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise UsageError(f"--max-retries must be 0 or more, got {self.max_retries}")


def add_llm_args(p, max_tokens: int) -> None:
    """The endpoint, model, routing and operations flags shared by `synthesize` and `verify`."""
    p.add_argument("--endpoint", default="http://127.0.0.1:8000/v1",
                   help="base URL of an OpenAI-compatible API (default: a local vLLM server)")
    p.add_argument("--model", help="model name for every document (or use --bins)")
    p.add_argument("--bins",
                   help='model by document length in tokens, first match wins: "<=100000:modelA,>100000:modelB"')
    p.add_argument("--tokenizer",
                   help="tokenizer (path or name) for --bins lengths (default: words + CJK characters)")
    p.add_argument("--api-key-env",
                   help=f"environment variable holding the API key (default: {' then '.join(API_KEY_ENVS)})")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--max-retries", type=int, default=5,
                   help="retries per request on 429/5xx/timeouts, with exponential backoff (default 5)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request attempt (default 600)")
    p.add_argument("--max-tokens", type=int, default=max_tokens,
                   help=f"completion tokens per request (default {max_tokens})")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    p.add_argument("--limit", type=int, help="stop after this many new units (documents or rows): a trial run")
    p.add_argument("--rejects", help="where rejected generations go with their reason (default: OUT.rejects.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def llm_options(args) -> LLMOptions:
    opts = LLMOptions(
        endpoint=args.endpoint, model=args.model, bins=parse_bins(args.bins) if args.bins else [],
        api_key_env=args.api_key_env, max_retries=args.max_retries, timeout_s=args.timeout,
        concurrency=args.concurrency, max_tokens=args.max_tokens, temperature=args.temperature,
        tokenizer=args.tokenizer,
    )
    opts.check()
    return opts


def api_key(env_name: str | None) -> str | None:
    names = (env_name,) if env_name else API_KEY_ENVS
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


@dataclass
class Reply:
    """One chat completion."""

    text: str
    finish_reason: str | None  # "stop", "length" (cut at max_tokens), ...
    prompt_tokens: int
    completion_tokens: int


class ChatClient:
    """A thread-safe OpenAI-compatible chat client (the openai client retries and backs off itself)."""

    def __init__(self, opts: LLMOptions):
        import openai

        key = api_key(opts.api_key_env)
        if key is None:
            names = opts.api_key_env or " or ".join(API_KEY_ENVS)
            print(f"note: no API key in ${names}; sending none (fine for a local server without --api-key)",
                  file=sys.stderr)
        self.opts = opts
        self.error_responses: Counter = Counter()  # HTTP status -> responses, retried ones included
        self._lock = threading.Lock()
        http = openai.DefaultHttpxClient(event_hooks={"response": [self._count_errors]})
        self.client = openai.OpenAI(base_url=opts.endpoint, api_key=key or "EMPTY", http_client=http,
                                    max_retries=opts.max_retries, timeout=opts.timeout_s)

    def _count_errors(self, response) -> None:
        if response.status_code >= 400:
            with self._lock:
                self.error_responses[f"http_{response.status_code}"] += 1

    def chat(self, model: str, prompt: str) -> Reply:
        extra = {} if self.opts.temperature is None else {"temperature": self.opts.temperature}
        response = self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=self.opts.max_tokens, **extra)
        choice = response.choices[0]
        usage = response.usage
        return Reply(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


class LengthCounter:
    """Document length in tokens of a tokenizer, or words plus CJK characters without one."""

    def __init__(self, tokenizer: str | None):
        self.tokenizer = None
        self._lock = threading.Lock()
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            from golong.data.stats import approx_tokens

            return approx_tokens(text)
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------------------------
# Resumable output


def _lines(path: str) -> Iterator[tuple[str, bool]]:
    """(line without its newline, complete?) for every line of a JSONL file, read as a stream (rows hold
    whole documents: the file can be large). Only a last line can be incomplete: one cut by a kill."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n"), line.endswith("\n")


def _json_object(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def _unit_of(line: str, key: str) -> str | None:
    row = _json_object(line)
    return str(row[key]) if row is not None and row.get(key) is not None else None


class ResumableOutput:
    """OUT (kept rows), REJECTS (rejected ones with the reason) and the ledger OUT.done, all JSONL.

    `key` is the field naming a line's unit of work (`doc_id` for synthesis, `id` for verification).
    """

    def __init__(self, out: str, rejects: str, key: str, job: dict | None = None):
        for flag, path in (("--out", out), ("--rejects", rejects)):
            if not path.lower().endswith(".jsonl"):
                raise UsageError(f"{flag} {path}: must be a .jsonl file (it is appended to as units finish, "
                                 f"which makes the run resumable); convert it to parquet afterwards if needed")
        self.out, self.rejects, self.ledger, self.key = out, rejects, out + ".done", key
        self.job = job or {}  # what the output was made with, e.g. {"subtask": "T2-a"}: checked on resume
        for path in (out, rejects):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.done: set[str] = set()
        for line, complete in _lines(self.ledger):
            entry = _json_object(line) if complete else None
            if entry is not None and entry.get("unit") is not None:
                self._check_job(entry)
                self.done.add(str(entry["unit"]))
        self._rewrite(self.ledger, "unit")
        self.lines_removed = self._rewrite(out, key) + self._rewrite(rejects, key)

    def _check_job(self, entry: dict) -> None:
        for name, value in self.job.items():
            if entry.get(name, value) != value:
                raise UsageError(f"--out {self.out} was written with {name} {entry[name]!r}, not {value!r}; "
                                 f"give this run its own --out (or delete {self.ledger} to start over)")

    def _rewrite(self, path: str, key: str) -> int:
        """Keep the complete lines of `path` whose unit is done; rewrite the file only if that drops any.
        Returns the number of lines dropped (a cut last line counts as one)."""
        dropped = sum(1 for line, complete in _lines(path) if not complete or _unit_of(line, key) not in self.done)
        if not dropped:
            return 0
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line, complete in _lines(path)
                         if complete and _unit_of(line, key) in self.done)
        os.replace(tmp, path)
        return dropped

    @staticmethod
    def _append(path: str, rows: list[dict]) -> None:
        if not rows:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def record(self, unit: str, rows: list[dict], rejects: list[dict], stats: dict) -> None:
        """One finished unit: its rows and rejects first, then its ledger line (what makes it done)."""
        self._append(self.rejects, rejects)
        self._append(self.out, rows)
        self._append(self.ledger, [{"unit": unit, **self.job, **stats}])
        self.done.add(unit)

    def record_failure(self, rejects: list[dict]) -> None:
        """A unit that could not be finished (its request failed): rejects only, so a re-run retries it."""
        self._append(self.rejects, rejects)


# ----------------------------------------------------------------------------------------------
# The job loop


@dataclass
class UnitResult:
    """What one unit of work produced."""

    rows: list[dict]  # kept rows (to OUT)
    rejects: list[dict]  # rejected ones, each with `reason` (to REJECTS)
    counts: Counter  # summary counters: generated, parsed, pass, ...
    done: bool = True  # False: a failed request; not in the ledger, retried by a re-run


def run_units(
    units: Iterable[tuple[str, object]],
    work: Callable[[object], UnitResult],
    output: ResumableOutput,
    concurrency: int,
    limit: int | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "units",
) -> Counter:
    """Run `work` on every (unit id, payload) not done yet, at most `concurrency` at once; write each
    result as it completes (from this thread only). Returns the summed counters plus `units_skipped_done`."""
    from tqdm import tqdm

    counts: Counter = Counter()
    todo = _not_done(units, output.done, counts, limit)
    bar = tqdm(total=total, desc=desc, unit="", disable=not progress, file=sys.stderr)
    bar.update(counts["units_skipped_done"])
    pending: dict[Future, str] = {}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for unit, payload in todo:
            pending[pool.submit(work, payload)] = unit
            while len(pending) >= 2 * concurrency:  # bounded: the next units are read as slots free up
                _collect(pending, output, counts, bar)
        while pending:
            _collect(pending, output, counts, bar)
    bar.close()
    return counts


def _not_done(units, done: set[str], counts: Counter, limit: int | None) -> Iterator[tuple[str, object]]:
    started = 0
    for unit, payload in units:
        if unit in done:
            counts["units_skipped_done"] += 1
            continue
        if limit is not None and started >= limit:
            return
        started += 1
        counts["units_started"] += 1
        yield unit, payload


def _collect(pending: dict[Future, str], output: ResumableOutput, counts: Counter, bar) -> None:
    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for future in finished:
        unit = pending.pop(future)
        result = future.result()  # work() turns request and parse errors into rejects; anything else is a bug
        counts.update(result.counts)
        if result.done:
            output.record(unit, result.rows, result.rejects, dict(result.counts))
        else:
            output.record_failure(result.rejects)
        bar.update(1)


def run_llm_job(
    opts: LLMOptions,
    output: ResumableOutput,
    units: Iterable[tuple[str, object]],
    text_of: Callable[[object], str],
    prompt_of: Callable[[object], str],
    handle: Callable[[object, str, Reply], UnitResult],
    *,
    limit: int | None,
    total: int | None,
    progress: bool,
    desc: str,
) -> Counter:
    """The frame of both commands: route each unit not done yet to its model by the length of
    `text_of(payload)`, send `prompt_of(payload)`, and let `handle(payload, model, reply)` turn the reply
    into rows and rejects. A request that fails after the client's retries becomes a `request` reject
    and stays undone; tokens and requests are counted here."""
    import openai

    client = ChatClient(opts)
    length = LengthCounter(opts.tokenizer)
    counts: Counter = Counter()

    def routed():
        for unit, payload in units:
            if unit in output.done:
                yield unit, None  # run_units counts it as done; no need to measure it
                continue
            model = model_for(length(text_of(payload)), opts.bins, opts.model)
            if model is None:
                counts["outside_bins"] += 1
                continue
            yield unit, (unit, payload, model)

    def work(job) -> UnitResult:
        unit, payload, model = job
        try:
            reply = client.chat(model, prompt_of(payload))
        except openai.APIError as e:  # after the client's retries (timeouts and connection errors included)
            status = getattr(e, "status_code", None)
            reason = (f"request failed after {opts.max_retries} retries "
                      f"({f'HTTP {status}' if status else type(e).__name__}): {str(e)[:300]}")
            reject = {output.key: unit, "model": model, "stage": "request", "reason": reason}
            return UnitResult([], [reject], Counter(requests_failed=1), done=False)
        result = handle(payload, model, reply)
        result.counts.update({"requests_ok": 1, "prompt_tokens": reply.prompt_tokens,
                              "completion_tokens": reply.completion_tokens, f"model:{model}": 1})
        if reply.finish_reason == "length":
            result.counts["replies_truncated"] += 1
            for r in result.rejects:
                r["reason"] += f" (the reply was cut at --max-tokens {opts.max_tokens})"
        return result

    counts += run_units(routed(), work, output, opts.concurrency, limit=limit, total=total, progress=progress,
                        desc=desc)
    return counts + client.error_responses


def rows_with_unique_ids(path: str, id_of: Callable[[int, dict], str], what: str, why: str) -> Iterator[tuple[int, str, dict]]:
    """(row number, id, row) of every row of `path`; a bad row or a repeated id stops the job (DataError)."""
    from golong.data.rowio import read_rows
    from golong.data.schema import DataError

    seen = set()
    for row_no, row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        row_id = id_of(row_no, row)
        if row_id in seen:
            raise DataError(path, row_no, "id", f"repeats {row_id!r}; {what} ids must be unique ({why})")
        seen.add(row_id)
        yield row_no, row_id, row


def strip_reasoning(text: str) -> str:
    """A thinking model's reply without its reasoning block (the text after the last </think>)."""
    close = text.rfind("</think>")
    return text[close + len("</think>"):] if close >= 0 else text


def common_summary(counts: Counter, output: ResumableOutput, unit_name: str) -> list[str]:
    """Summary lines on requests and tokens, shared by both commands."""
    lines = [
        f"{unit_name}: {counts['units_started']} processed this run, {counts['units_skipped_done']} already done "
        f"(skipped), {len(output.done)} done in all",
        f"requests: {counts['requests_ok']} answered, {counts['requests_failed']} failed after retries"
        + (f" (recorded in {output.rejects}; re-run to retry them)" if counts["requests_failed"] else ""),
        f"tokens used: {counts['prompt_tokens']} prompt + {counts['completion_tokens']} completion = "
        f"{counts['prompt_tokens'] + counts['completion_tokens']}",
    ]
    errors = sorted((int(k[5:]), v) for k, v in counts.items() if k.startswith("http_"))
    if errors:
        lines.append("error responses (408, 409, 429 and 5xx are retried while retries are left): "
                     + ", ".join(f"HTTP {code} x{n}" for code, n in errors))
    models = sorted((k.split(":", 1)[1], v) for k, v in counts.items() if k.startswith("model:"))
    if models:
        lines.append("requests by model: " + ", ".join(f"{m} {n}" for m, n in models))
    if output.lines_removed:
        lines.append(f"resumed: removed {output.lines_removed} lines of unfinished units from an earlier run")
    if counts["outside_bins"]:
        lines.append(f"{unit_name} outside every --bins rule (left for another run): {counts['outside_bins']}")
    return lines
