"""`golong eval --benchmark NAME` / `--suite paper`: benchmark rows -> prompts (fitted to the budget) ->
the rollout collector -> each benchmark's official metric -> a Table-5-style report.

Data arguments (`--data`):
- with `--benchmark NAME`: the benchmark's released files, `--data FILE [FILE ...]`;
- with `--suite paper`: `NAME=FILE` entries (a name may repeat: `longbench_qa=hotpotqa.jsonl
  longbench_qa=musique.jsonl`), and/or a directory DIR holding one folder per benchmark named as it is
  registered (DIR/longbench_v2/data.json, DIR/longbench_qa/*.jsonl, ...). The suite runs the benchmarks
  that got files and reports the others as not run.

Budget: `--max-prompt-length` tokens, the chat template included. A longer prompt of a truncating
benchmark keeps the first and last halves of what its last user turn may take (LongBench's pred.py rule,
golong/benchmarks/base.py middle_truncate; decoded without special tokens, as pred.py does); MRCR rows
are skipped instead. Both are counted in the report. Generation is the collector's (golong/rollout/collect.py,
one engine for every benchmark of the run); the collector's own reward (em against the gold text) is not
reported: each response is scored again by its benchmark's metric, on rank 0, judge requests in parallel.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from golong.benchmarks.base import STATUSES, BENCH_FILE_TYPES, Benchmark, BenchItem, Score, benchmark_names, get_benchmark, load_items, middle_truncate
from golong.benchmarks.judge import Judge, JudgeOptions
from golong.configlib import UsageError
from golong.data.schema import Example

# The paper's Table 5 columns, in its order.
SUITES = {"paper": ("docmath", "longbench_v2", "frames", "mrcr", "corpusqa", "longbench_qa")}


def data_files(data: list[str], benchmark: str | None, suite: str | None) -> dict[str, list[str]]:
    """benchmark name -> its files, from --data (module docstring)."""
    if benchmark:
        get_benchmark(benchmark)
        named = [d for d in data if "=" in d and d.split("=", 1)[0] in benchmark_names()]
        if named:
            raise UsageError(f"--data: {named[0]!r} names a benchmark, but --benchmark {benchmark} takes plain files. "
                             f"Fix: drop the NAME= prefix, or use --suite paper")
        return {benchmark: list(data)}
    names = SUITES[suite]
    files: dict[str, list[str]] = {}
    for entry in data:
        if os.path.isdir(entry):
            for name in names:
                folder = os.path.join(entry, name)
                if os.path.isdir(folder):
                    files.setdefault(name, []).extend(
                        os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(BENCH_FILE_TYPES))
            continue
        name, sep, path = entry.partition("=")
        if not sep:
            raise UsageError(f"--data: {entry!r} is neither NAME=FILE nor a directory. Fix: write e.g. "
                             f"longbench_v2={entry}, or pass a directory with one folder per benchmark ({', '.join(names)})")
        if name not in names:
            get_benchmark(name)  # unknown: the error lists the valid names
            raise UsageError(f"--data: {name} is not in --suite {suite}. Fix: use one of {', '.join(names)}")
        files.setdefault(name, []).append(path)
    if not files:
        raise UsageError(f"--data: no benchmark files found. Fix: pass NAME=FILE entries or a directory with "
                         f"folders named {', '.join(names)}")
    return {name: files[name] for name in names if name in files}


# ----------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompted:
    """One benchmark's rows, prompted."""

    bench: Benchmark
    items: list[BenchItem]
    messages: list[list[dict]]  # (rows,) the chat turns sent, after truncation
    prompt_tokens: list[int]  # (rows,) the templated prompt's tokens before truncation
    truncated: list[bool]  # (rows,) cut to the budget


def _render(tokenizer, messages: list[dict], enable_thinking: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


_REFITS = 4  # attempts to bring a cut prompt within the budget (a prompt still over it is skipped and counted)


def fit_to_budget(messages: list[dict], tokenizer, budget: int, enable_thinking: bool,
                  equal_halves: bool) -> tuple[list[dict], int, bool]:
    """(messages, templated prompt tokens before, whether cut): a prompt over `budget` tokens keeps the
    first and last halves of the tokens its last turn may have once the template's own are counted."""
    total = len(_render(tokenizer, messages, enable_thinking))
    if total <= budget:
        return messages, total, False
    overhead = len(_render(tokenizer, [*messages[:-1], {**messages[-1], "content": ""}], enable_thinking))
    room = budget - overhead
    if room < 2:
        return messages, total, False  # the template alone fills the budget: the collector skips the row
    ids = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    for _ in range(_REFITS):  # decoded and tokenized again, the cut text can merge into a token or two more
        content = tokenizer.decode(middle_truncate(ids, room, equal_halves=equal_halves), skip_special_tokens=True)
        fitted = [*messages[:-1], {**messages[-1], "content": content}]
        over = len(_render(tokenizer, fitted, enable_thinking)) - budget
        if over <= 0 or room - over < 2:
            break
        room -= over
    return fitted, total, True


def prompt_benchmark(bench: Benchmark, items: list[BenchItem], tokenizer, budget: int, enable_thinking: bool) -> Prompted:
    out = Prompted(bench, items, [], [], [])
    for item in items:
        messages = bench.messages(item)
        if bench.truncation == "middle":
            messages, tokens, cut = fit_to_budget(messages, tokenizer, budget, enable_thinking, bench.truncation_equal_halves)
        else:
            tokens, cut = len(_render(tokenizer, messages, enable_thinking)), False
        out.messages.append(messages)
        out.prompt_tokens.append(tokens)
        out.truncated.append(cut)
    return out


def to_examples(prompted: list[Prompted]) -> list[Example]:
    """Collector examples, task = the benchmark's name. The reward type and ground truth are the collector's
    (em against the gold as text), not the benchmark's metric, which scores the responses afterwards."""
    return [Example(id=f"{p.bench.name}:{item.id}", task=p.bench.name, reward_type="em",
                    ground_truth=item.gold if isinstance(item.gold, str) else json.dumps(item.gold),
                    messages=messages, source=p.bench.name, file=item.file, row=item.row)
            for p in prompted for item, messages in zip(p.items, p.messages)]


# ----------------------------------------------------------------------------------------------
# Scoring and the report


def score_responses(prompted: Prompted, responses: list[list[str]], judge, require_think_close: bool,
                    concurrency: int = 1) -> list[list[Score]]:
    """Every response of every row, scored by the benchmark's metric (judge requests `concurrency` at once)."""
    jobs = [(r, text) for r, texts in enumerate(responses) for text in texts]

    def one(job):
        r, text = job
        return prompted.bench.score(prompted.items[r], text, judge, require_think_close=require_think_close)

    if prompted.bench.needs_judge and concurrency > 1:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, jobs))
    else:
        results = [one(job) for job in jobs]
    scores: list[list[Score]] = [[] for _ in responses]
    for (r, _), s in zip(jobs, results):
        scores[r].append(s)
    return scores


def benchmark_report(prompted: Prompted, scores: list[list[Score]]) -> dict:
    """One benchmark's headline (0-100), counts, statuses and breakdown (100 x mean avg@G per group)."""
    bench = prompted.bench
    rows = [(item, [s.value for s in ss]) for item, ss in zip(prompted.items, scores)]
    statuses = Counter(s.status for ss in scores for s in ss)
    groups: dict[str, dict[str, list[float]]] = {}
    for item, tokens, ss in zip(prompted.items, prompted.prompt_tokens, scores):
        if not ss:
            continue
        for key, value in bench.breakdown(item, tokens).items():
            groups.setdefault(key, {}).setdefault(value, []).append(sum(s.value for s in ss) / len(ss))
    return {
        "column": bench.column, "score": bench.headline(rows),
        "rows": sum(1 for ss in scores if ss), "responses": sum(len(ss) for ss in scores),
        "rows_skipped_too_long": sum(1 for ss in scores if not ss), "rows_truncated": sum(prompted.truncated),
        "statuses": {k: statuses[k] for k in STATUSES if statuses[k]},
        "breakdown": {key: {value: {"rows": len(v), "score": 100.0 * sum(v) / len(v)} for value, v in sorted(values.items())}
                      for key, values in groups.items()},
    }


def suite_table(model: str, reports: dict[str, dict], names: tuple[str, ...]) -> str:
    """The paper's Table 5 layout: Model, Avg., then one column per benchmark ('-' for one not run).
    Avg. is the mean over the benchmarks that were run (all six for the paper's number)."""
    columns = [get_benchmark(n).column for n in names]
    values = [reports[n]["score"] if n in reports else None for n in names]
    done = [v for v in values if v is not None]
    avg = sum(done) / len(done) if done else None
    cell = lambda v, w: f"{v:>{w}.1f}" if v is not None else f"{'-':>{w}}"
    label = os.path.basename(os.path.normpath(model)) or model
    widths = [max(len(c), 6) + 2 for c in columns]
    lines = [f"{'Model':<24}{'Avg.':>8}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)),
             f"{label[:23]:<24}{cell(avg, 8)}" + "".join(cell(v, w) for v, w in zip(values, widths))]
    if len(done) < len(names):
        lines.append(f"(Avg. over the {len(done)} of {len(names)} benchmarks run)")
    return "\n".join(lines)


def detail_lines(reports: dict[str, dict]) -> list[str]:
    out = []
    for name, r in reports.items():
        score = f"{r['score']:.2f}" if r["score"] is not None else "-"
        status = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        out.append(f"{r['column']}: {score} over {r['rows']} rows / {r['responses']} responses; "
                   f"{r['rows_truncated']} truncated, {r['rows_skipped_too_long']} skipped (too long); {status}")
        for key, values in r["breakdown"].items():
            out.append(f"  {key}: " + ", ".join(f"{v} {m['score']:.2f} ({m['rows']})" for v, m in values.items()))
    return out


# ----------------------------------------------------------------------------------------------
# Command line


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
    from golong.benchmarks import benchmark_names

    g = p.add_mutually_exclusive_group()
    g.add_argument("--benchmark", help=f"score --data as one released benchmark: {', '.join(benchmark_names())}")
    g.add_argument("--suite", choices=sorted(SUITES),
                   help="the paper's six benchmarks (Table 5); --data NAME=FILE ... or a directory of NAME/ folders")
    d = JudgeOptions()
    p.add_argument("--judge-model", help="judge model name for frames and corpusqa (their official metric is an LLM judge)")
    p.add_argument("--judge-endpoint", default=d.endpoint, help=f"OpenAI-compatible base URL of the judge (default {d.endpoint})")
    p.add_argument("--judge-api-key-env", help="environment variable with the judge's API key "
                                               "(default GOLONG_SYNTH_API_KEY then OPENAI_API_KEY)")
    p.add_argument("--judge-concurrency", type=int, default=d.concurrency, help=f"judge requests at once (default {d.concurrency})")
    p.add_argument("--judge-max-retries", type=int, default=d.max_retries, help=f"retries per judge request (default {d.max_retries})")
    p.add_argument("--judge-timeout", type=float, default=d.timeout_s, help=f"seconds per judge request (default {d.timeout_s:g})")
    p.add_argument("--judge-max-tokens", type=int, default=d.max_tokens, help=f"judge completion tokens (default {d.max_tokens})")


def judge_options(args: argparse.Namespace) -> JudgeOptions:
    return JudgeOptions(endpoint=args.judge_endpoint, model=args.judge_model, api_key_env=args.judge_api_key_env,
                        max_retries=args.judge_max_retries, timeout_s=args.judge_timeout,
                        concurrency=args.judge_concurrency, max_tokens=args.judge_max_tokens)


def run_benchmarks(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from golong.data.rowio import write_json
    from golong.rollout.collect import collect_for_examples
    from golong.rollout.options import configs_from_args
    from golong.world import init_world

    rollout_cfg, reward_cfg, data_cfg = configs_from_args(args)
    files = data_files(args.data, args.benchmark, args.suite)
    loaded = {name: load_items(get_benchmark(name), paths) for name, paths in files.items()}
    judge = None
    if any(get_benchmark(name).needs_judge for name in loaded):  # checked before any engine starts
        judge = Judge(judge_options(args))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompted = [prompt_benchmark(get_benchmark(name), items, tokenizer, data_cfg.max_prompt_length,
                                 data_cfg.enable_thinking) for name, items in loaded.items()]
    examples = to_examples(prompted)
    world = init_world()
    rollouts = collect_for_examples(examples, args.model, rollout_cfg, reward_cfg, data_cfg, world)
    if not world.is_main:
        return 0
    _, texts = rollouts.per_example(len(examples))
    reports, samples, start = {}, [], 0
    for p in prompted:
        responses = texts[start:start + len(p.items)]
        start += len(p.items)
        scores = score_responses(p, responses, judge, reward_cfg.require_think_close,
                                 judge.opts.concurrency if judge else 1)
        reports[p.bench.name] = benchmark_report(p, scores)
        samples += [{"benchmark": p.bench.name, "id": item.id, "file": item.file, "row": item.row,
                     "prompt_tokens": tokens, "truncated": cut, "responses": rs,
                     "scores": [s.value for s in ss], "statuses": [s.status for s in ss],
                     "extracted": [s.extracted for s in ss]}
                    for item, tokens, cut, rs, ss in zip(p.items, p.prompt_tokens, p.truncated, responses, scores) if ss]
    names = SUITES[args.suite] if args.suite else (args.benchmark,)
    table = suite_table(args.model, reports, names)
    report = {"model": args.model, "suite": args.suite, "data": files, "g": rollout_cfg.n,
              "temperature": rollout_cfg.temperature, "top_p": rollout_cfg.top_p,
              "max_tokens": rollout_cfg.max_response_length, "max_prompt_length": data_cfg.max_prompt_length,
              "judge_model": judge.opts.model if judge else None, "benchmarks": reports, "table": table}
    write_json(args.out, report)
    if args.samples_out:
        from golong.data.rowio import write_rows

        write_rows(args.samples_out, json.loads(json.dumps(samples, default=str)))
    print(table)
    print("\n".join(detail_lines(reports)))
    print(f"report written to {args.out}")
    return 0
