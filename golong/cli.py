"""`golong` command line: train, eval, data tools, plot, export, and the CPU demo's assets.

Heavy libraries (torch, vLLM, DeepSpeed) are imported only by the command that needs them, so
`golong --help` and `golong train RECIPE --dry-run` answer at once.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from golong.configlib import ConfigError, UsageError, reference_markdown, to_dict


def run_command(args: argparse.Namespace) -> int:
    """The one error path of every command: a user's mistake (bad recipe, bad data, missing file) is one
    line naming the fix and exit status 2; anything else is a bug and keeps its traceback."""
    from golong.data.schema import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, UsageError, FileNotFoundError) as e:
        print(f"golong: error: {e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from golong.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        print(f"# {args.recipe}: valid ({len(args.overrides)} override(s))", file=sys.stderr)
        return 0
    from golong.console import quiet_imports

    quiet_imports(cfg.logging.verbose)  # before DeepSpeed and vLLM are imported
    from golong.trainer.loop import train

    train(cfg)
    return 0


def _export(args: argparse.Namespace) -> int:
    from golong.trainer.export import export_checkpoint

    print(f"HF model written to {export_checkpoint(args.run_dir, args.out)}")
    return 0


def _prepare_demo(args: argparse.Namespace) -> int:
    from golong.console import is_verbose, quiet_imports

    quiet_imports()
    if not is_verbose():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one tiny shard: its progress bar says nothing
    from golong.data.synthetic import ANIMALS, COLOURS, LETTERS, demo_corpus, make_demo_dataset
    from golong.tiny_model import TinyModelSpec, build_tiny_model

    make_demo_dataset(f"{args.out_dir}/train.jsonl", n=args.rows, seed=0)
    # A ~160-token vocabulary in which every answer word is one token (the answer words are repeated
    # so BPE merges them first): a random-init policy already names colours and animals now and then,
    # which gives RL groups with differing rewards from the first step.
    answers = " ".join([*ANIMALS, *COLOURS, *LETTERS, "[Answer]"])
    build_tiny_model(f"{args.out_dir}/model", corpus=demo_corpus() + [answers] * 3000,
                     spec=TinyModelSpec(vocab_size=160, byte_level=False))
    print(f"demo assets in {args.out_dir}: train.jsonl ({args.rows} rows), model/")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from golong.config import Config

    print(reference_markdown(Config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from golong.data.cli import add_data_commands
    from golong.eval import add_eval_command
    from golong.plot import add_plot_command

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

    p = sub.add_parser("export", help="write an HF-format model from a run's latest checkpoint")
    p.add_argument("run_dir", help="a run folder (trainer.output_dir)")
    p.add_argument("--out", default=None, help="destination (default RUN_DIR/hf)")
    p.set_defaults(func=_export)

    p = sub.add_parser("prepare-demo", help="write the CPU demo's synthetic dataset and tiny model")
    p.add_argument("out_dir")
    p.add_argument("--rows", type=int, default=512)
    p.set_defaults(func=_prepare_demo)

    p = sub.add_parser("config-reference", help="print every config key with its default and doc (markdown)")
    p.set_defaults(func=_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
