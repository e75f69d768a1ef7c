"""The LLM judge of the judge-scored benchmarks (Frames, CorpusQA): any OpenAI-compatible chat endpoint,
through the same client `golong data synthesize` / `verify` use (golong/data/synth_jobs.py: ChatClient,
its retries, timeouts and API-key lookup).

A judge reply decides TRUE or FALSE; a reply with no readable decision scores 0 and is counted
(Score.status judge_malformed), and so does a request that failed after its retries (judge_error).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from golong.benchmarks.base import JUDGE_ERROR, JUDGE_MALFORMED, OK, Score
from golong.configlib import UsageError
from golong.data.synth_jobs import ChatClient, LLMOptions, strip_reasoning


@dataclass
class JudgeOptions:
    """How to reach the judge model (`golong eval --judge-*`)."""

    endpoint: str = "http://127.0.0.1:8000/v1"  # base URL of an OpenAI-compatible API
    model: str | None = None  # the judge model's name; required by a judge-scored benchmark
    api_key_env: str | None = None  # environment variable with the key (None: GOLONG_SYNTH_API_KEY, OPENAI_API_KEY)
    max_retries: int = 5  # per request, on 408/409/429/5xx, connection errors and timeouts
    timeout_s: float = 300.0  # per request attempt
    concurrency: int = 8  # judge requests in flight at once
    max_tokens: int = 2048  # completion tokens per judgement
    temperature: float | None = 0.0  # greedy judgements; None: the server's default

    def check(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"--judge-concurrency: must be at least 1, got {self.concurrency}. Fix: pass 1 or more")
        if self.max_retries < 0:
            raise UsageError(f"--judge-max-retries: must be 0 or more, got {self.max_retries}. Fix: pass 0 or more")


class Judge:
    """Sends one judge prompt and reads its decision with a benchmark's parser."""

    def __init__(self, opts: JudgeOptions):
        import openai

        if not opts.model:
            raise UsageError("--judge-model: a judge-scored benchmark (frames, corpusqa) needs a judge. "
                             "Fix: pass --judge-model NAME (and --judge-endpoint URL)")
        opts.check()
        self.opts = opts
        self._api_error = openai.APIError
        self.client = ChatClient(LLMOptions(
            endpoint=opts.endpoint, model=opts.model, api_key_env=opts.api_key_env, max_retries=opts.max_retries,
            timeout_s=opts.timeout_s, concurrency=opts.concurrency, max_tokens=opts.max_tokens,
            temperature=opts.temperature))

    def decide(self, prompt: str, parse: Callable[[str], bool | None]) -> Score:
        """1 when the judge says the answer is right, 0 when wrong, 0 with a status when unreadable/failed."""
        try:
            reply = self.client.chat(self.opts.model, prompt)
        except self._api_error as e:  # after the client's retries
            return Score(0.0, JUDGE_ERROR, extracted=f"{type(e).__name__}: {e}"[:300])
        verdict = parse(strip_reasoning(reply.text))
        if verdict is None:
            return Score(0.0, JUDGE_MALFORMED, extracted=reply.text[-300:])
        return Score(1.0 if verdict else 0.0, OK, extracted=reply.text[-300:])


_DECISION = re.compile(r"decision\W{0,6}(true|false)\b", re.IGNORECASE)
_YES_NO = re.compile(r"\[\[\s*(yes|no)\s*\]\]", re.IGNORECASE)


def parse_true_false(text: str) -> bool | None:
    """Frames' autorater format: `Decision: TRUE` / `"Decision:" "FALSE"`; the last decision counts;
    None when there is none."""
    found = _DECISION.findall(text)
    return found[-1].lower() == "true" if found else None


def parse_yes_no(text: str) -> bool | None:
    """The `[[YES]]` / `[[NO]]` verdict of the equivalence judge; the last one counts; None when there is none."""
    found = _YES_NO.findall(text)
    return found[-1].lower() == "yes" if found else None
