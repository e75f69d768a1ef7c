"""`golong` command line: train, eval, data tools, plot, export, selftest, and the CPU demo's assets.

Heavy libraries (torch, vLLM, DeepSpeed) are imported only by the command that needs them, so
`golong --help` and `golong train RECIPE --dry-run` answer at once.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from golong.configlib import UsageError, reference_markdown, to_dict
from golong.console import run_command


def _train(args: argparse.Namespace) -> int:
    from golong.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        print(f"# {args.recipe}: valid ({len(args.overrides)} override(s))", file=sys.stderr)
        return 0
    from golong.console import quiet_imports

    quiet_imports(cfg.logging.verbose)  # before DeepSpeed and vLLM are imported
    from golong.trainer.loop import TrainingStopped, train

    try:
        train(cfg)
    except TrainingStopped as e:  # not a recipe mistake (exit 2): the run itself went wrong
        print(f"golong: error: {e}", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from golong.trainer.export import export_checkpoint

    print(f"HF model written to {export_checkpoint(args.run_dir, args.out, best=args.best)}")
    return 0


def _prepare_demo(args: argparse.Namespace) -> int:
    from golong.console import is_verbose, quiet_imports

    quiet_imports()
    if not is_verbose():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one tiny shard: its progress bar says nothing
    from golong.data.synthetic import TASKS, demo_corpus, demo_splits, write_rows
    from golong.demo import DEMO_MODEL, sft_warmup
    from golong.tiny_model import build_tiny_model

    out = args.out_dir
    try:
        splits = demo_splits(train_docs=-(-args.rows // len(TASKS)), eval_docs=args.eval_docs,
                             warmup_docs=args.warmup_docs)
    except ValueError as e:
        raise UsageError(f"{e}: lower --rows, --eval-docs or --warmup-docs") from None
    for name, rows in splits.items():
        write_rows(f"{out}/{name}.jsonl", rows)
    build_tiny_model(f"{out}/init", corpus=demo_corpus(), spec=DEMO_MODEL)
    # The starting model of RL: the random-init model after a short supervised warm-up on warmup.jsonl.
    sft_warmup(f"{out}/init", f"{out}/warmup.jsonl", f"{out}/model", steps=args.warmup_steps)
    print(f"demo assets in {out}: train.jsonl ({len(splits['train'])} rows), eval.jsonl ({len(splits['eval'])} "
          f"held-out rows), warmup.jsonl ({len(splits['warmup'])} rows), init/ (random), "
          f"model/ ({args.warmup_steps} warm-up steps)")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from golong.config import Config

    print(reference_markdown(Config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from golong.data.cli import add_data_commands
    from golong.eval import add_eval_command
    from golong.plot import add_plot_command
    from golong.selftest import add_selftest_command

    parser = argparse.ArgumentParser(prog="golong", description="GoLongRL training for long-context LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train with a YAML recipe (alone or under torchrun)")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.total_steps=3")
    p.add_argument("--dry-run", action="store_true", help="resolve, validate and print the config, then exit")
    p.set_defaults(func=_train)

    add_eval_command(sub)
    add_data_commands(sub)
    add_plot_command(sub)
    add_selftest_command(sub)

    p = sub.add_parser("export", help="write an HF-format model from a run's latest checkpoint")
    p.add_argument("run_dir", help="a run folder (trainer.output_dir)")
    p.add_argument("--out", default=None, help="destination (default RUN_DIR/hf, RUN_DIR/hf-best with --best)")
    p.add_argument("--best", action="store_true",
                   help="export the best-validated checkpoint (trainer.save_best: checkpoints/best/) instead")
    p.set_defaults(func=_export)

    p = sub.add_parser("prepare-demo", help="write the CPU demo's synthetic splits and its warmed-up tiny model")
    p.add_argument("out_dir")
    p.add_argument("--rows", type=int, default=2000, help="training rows (4 per document; default 2000)")
    p.add_argument("--eval-docs", type=int, default=64, help="held-out documents (4 rows each; default 64)")
    p.add_argument("--warmup-docs", type=int, default=300, help="documents of the warm-up split (4 rows each; default 300)")
    p.add_argument("--warmup-steps", type=int, default=150, help="supervised warm-up steps of 16 rows (default 150)")
    p.set_defaults(func=_prepare_demo)

    p = sub.add_parser("config-reference", help="print every config key with its default and doc (markdown)")
    p.set_defaults(func=_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
