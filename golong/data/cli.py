"""`golong data validate|stats|decontaminate|calibrate|synthesize|verify`: the dataset tools (section 3.4).

    golong data validate FILE [FILE ...]
    golong data stats FILE [FILE ...] [--model PATH] [--png PATH]
    golong data decontaminate --train FILE --bench [NAME=]FILE ... --out FILE [--n 13] [--field question]
    golong data calibrate --train FILE --model PATH [--model2 PATH] [--g 8] --out FILE
    golong data synthesize --docs DOCS.jsonl --subtask T2-a --model NAME --out QA.jsonl [--endpoint URL]
    golong data verify --qa QA.jsonl --model NAME --out VERIFIED.jsonl [--endpoint URL]

Each works on native rows and on released GoLongRL records alike. Also runnable as
`python -m golong.data.cli ...`.
"""
from __future__ import annotations

import argparse
import os
import sys

from golong.data.config import DataConfig

MAX_ERRORS_SHOWN = 50


def cmd_validate(args: argparse.Namespace) -> int:
    from golong.data.loader import load_examples

    data = load_examples(args.files, DataConfig(format=args.format, on_bad_row="skip"))
    for e in data.bad_rows[:MAX_ERRORS_SHOWN]:
        print(f"error: {e}", file=sys.stderr)
    if len(data.bad_rows) > MAX_ERRORS_SHOWN:
        print(f"... and {len(data.bad_rows) - MAX_ERRORS_SHOWN} more bad rows", file=sys.stderr)
    formats = ", ".join(f"{path} ({fmt})" for path, fmt in data.formats.items())
    tasks = ", ".join(f"{t} {n}" for t, n in data.task_counts().items())
    print(f"{formats}: {len(data.examples)} valid rows, {data.num_bad_rows_skipped} bad rows; tasks: {tasks}")
    return 1 if data.bad_rows else 0


def cmd_stats(args: argparse.Namespace) -> int:
    from golong.data.loader import load_examples
    from golong.data.stats import compute_stats, format_stats, plot_stats, prompt_lengths

    examples = load_examples(args.files, DataConfig(format=args.format)).examples
    tokenizer = None
    if args.model:
        from golong.model_check import load_tokenizer

        tokenizer = load_tokenizer(args.model, "--model")
    stats = compute_stats(examples, prompt_lengths(examples, tokenizer), "tokens" if tokenizer else "approx. tokens")
    print(format_stats(stats))
    png = args.png or os.path.splitext(args.files[0])[0] + "_stats.png"
    plot_stats(stats, png)
    print(f"plot written to {png}")
    return 0


def cmd_decontaminate(args: argparse.Namespace) -> int:
    from golong.data.decontaminate import decontaminate, summary_lines

    result = decontaminate(args.train, args.bench, args.out, n=args.n, field=args.field or "question",
                           bench_text=args.bench_text, autodetect=args.field is None)
    print("\n".join(summary_lines(result, args.n)))
    print(f"kept rows written to {args.out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from golong.data.calibrate import run_calibration
    from golong.model_check import check_model_path
    from golong.rollout.options import configs_from_args
    from golong.world import init_world

    rollout_cfg, reward_cfg, data_cfg = configs_from_args(args)
    check_model_path(args.model, "--model")
    if args.model2:
        check_model_path(args.model2, "--model2")
    world = init_world()
    run = run_calibration(args.train, args.out, args.model, args.model2, rollout_cfg, reward_cfg, data_cfg, world)
    if world.is_main:
        print(run.summary.ratio_line())
        print(f"{run.rows_written} rows written to {args.out} (discarded rows left out); "
              f"{run.rows_skipped_too_long} rows skipped (prompt too long)")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from golong.data.synth_jobs import llm_options
    from golong.data.synthesize import default_rejects, load_subtask, synthesize

    sub = load_subtask(args.subtask, args.task, args.prompt)
    run = synthesize(args.docs, args.out, args.rejects or default_rejects(args.out), sub, llm_options(args),
                     text_field=args.text_field, shared_prompt=args.shared_prompt or "B1_shared_instruction",
                     limit=args.limit, progress=not args.no_progress)
    print("\n".join(run.summary_lines()))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from golong.data.synth_jobs import llm_options
    from golong.data.synthesize import default_rejects
    from golong.data.verify import verify

    run = verify(args.qa, args.out, args.rejects or default_rejects(args.out), llm_options(args),
                 prompt=args.prompt or "B2_verify", limit=args.limit, progress=not args.no_progress)
    print("\n".join(run.summary_lines()))
    return 0


def _add_commands(commands) -> None:
    from golong.rollout.options import add_sampling_args

    formats = ("auto", "native", "released")

    p = commands.add_parser("validate", help="check every row's schema; non-zero exit on errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=formats, default="auto", help="row format (default: told per file)")
    p.set_defaults(func=cmd_validate)

    p = commands.add_parser("stats", help="rows per task and reward type, prompt lengths, a task x length plot")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", help="count tokens with this model's tokenizer (default: approximate word counts)")
    p.add_argument("--png", help="plot path (default: FILE without extension + _stats.png)")
    p.add_argument("--format", choices=formats, default="auto", help="row format (default: told per file)")
    p.set_defaults(func=cmd_stats)

    p = commands.add_parser("decontaminate", help="drop training rows sharing an n-gram with a benchmark question")
    p.add_argument("--train", required=True, help="training file (.jsonl or .parquet)")
    p.add_argument("--bench", required=True, nargs="+",
                   help="benchmark files: NAME=FILE (a released benchmark file: longbench_v2, mrcr, longbench_qa, "
                        "docmath, frames, corpusqa), or FILE (its benchmark told by its fields, else --field)")
    p.add_argument("--out", required=True, help="where the kept rows go (same file type as --train)")
    p.add_argument("--n", type=int, default=13, help="n-gram length in tokens (default 13, paper section 3.4)")
    p.add_argument("--field", default=None,
                   help="field holding the question, dotted for nested ones (default question; released "
                        "records fall back to extra_info.question); given, plain --bench files are read by it")
    p.add_argument("--bench-text", choices=("question", "context", "both"), default="question",
                   help="benchmark text compared: the question (default, as the paper), the context, or both")
    p.set_defaults(func=cmd_decontaminate)

    p = commands.add_parser("calibrate", help="label rows easy/medium/hard by pass rate (paper section 3.4)")
    p.add_argument("--train", required=True, help="training file (.jsonl or .parquet)")
    p.add_argument("--model", required=True, help="stage-1 model (the paper: the 4B policy)")
    p.add_argument("--model2", help="stage-2 model for unsolved rows (the paper: the 30B-A3B model)")
    p.add_argument("--out", required=True, help="labelled rows (.jsonl or .parquet)")
    add_sampling_args(p, g=8, temperature=1.0, top_p=1.0)  # training-time sampling (section 5.1), G = 8
    p.set_defaults(func=cmd_calibrate)

    from golong.data.synth_jobs import add_llm_args

    p = commands.add_parser("synthesize",
                            help="three QA rows per document from a synthesis model (appendix B.1, B.3-B.11)")
    p.add_argument("--docs", required=True, help="documents (.jsonl or .parquet), one per row: id, text, source?")
    p.add_argument("--out", required=True, help="native QA rows (.jsonl), appended to and resumed")
    p.add_argument("--task", help="T1..T9 (enough for T1 and T5, which have one prompt each)")
    p.add_argument("--subtask", help="appendix B subtask prompt, e.g. T2-a (see golong/data/synth_prompts/)")
    p.add_argument("--prompt",
                   help="your own subtask prompt file (Primary Task: ... Secondary Task: ...), with --task")
    p.add_argument("--shared-prompt", help="your own shared instruction file instead of appendix B.1's")
    p.add_argument("--text-field", default="text",
                   help="document field holding the text (default text, then context)")
    add_llm_args(p, max_tokens=8192)
    p.set_defaults(func=cmd_synthesize)

    p = commands.add_parser("verify", help="PASS/REJECT each QA row with a verifier model (appendix B.2)")
    p.add_argument("--qa", required=True, help="QA rows from synthesize (.jsonl or .parquet)")
    p.add_argument("--out", required=True, help="PASS rows (.jsonl), appended to and resumed")
    p.add_argument("--prompt", help="your own verification prompt file instead of appendix B.2's")
    add_llm_args(p, max_tokens=4096)
    p.set_defaults(func=cmd_verify)


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Register `golong data validate|stats|decontaminate|calibrate|synthesize|verify` on argparse subparsers."""
    data = subparsers.add_parser("data",
                                 help="dataset tools: validate, stats, decontaminate, calibrate, synthesize, verify",
                                 description=__doc__.split("\n\n")[0])
    _add_commands(data.add_subparsers(dest="data_command", required=True))
    return data


def main(argv: list[str] | None = None) -> int:
    """`python -m golong.data.cli validate FILE ...`: the same commands without the `golong data` prefix."""
    parser = argparse.ArgumentParser(prog="golong data", description=__doc__.split("\n\n")[0])
    _add_commands(parser.add_subparsers(dest="data_command", required=True))
    from golong.console import run_command

    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
