"""What a run prints: golong's own lines and the progress bar (rank 0), and third-party warnings only when
they may need a person's attention.

The libraries under golong warn about things a golong user cannot act on (vLLM reloading weights into
a layer that has none to reload, float32 -> bfloat16 casts it does on purpose, CPU-only performance
hints; PyTorch deprecations called by DeepSpeed and vLLM). Those known messages, listed below, go to
`<output_dir>/logs/rank<R>.log` in full, with everything else the libraries log at INFO; any other
warning still reaches the console. `logging.verbose: true` (or GOLONG_VERBOSE=1) keeps every library's
own console output, untouched.

    quiet_imports(verbose)                         # before torch/DeepSpeed/vLLM are imported
    setup_console(log_dir, rank, verbose=False)    # once the output folder and the rank are known
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings

logger = logging.getLogger("golong")

# Python warnings (category, message regex) that say nothing a golong user can act on.
QUIET_WARNINGS = [
    # DeepSpeed ZeRO-3 and vLLM call torch.distributed names that torch 2.13 deprecates.
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.reduce_op` is deprecated"),
    (FutureWarning, r"`torch\.distributed\.reduce_scatter_tensor` is deprecated"),
]

# Third-party log records (logger name prefix, message regex) that go to the log file only.
QUIET_RECORDS = [
    # Weight sync reloads every layer; rotary embeddings have no weights to reload.
    ("vllm", r"Failed to load weights"),
    # vLLM loads the float32 checkpoint into its bfloat16 engine (rollout.dtype) on purpose.
    ("vllm", r"Attempted to load weight .* into parameter with dtype"),
    # vLLM's CPU backend: performance hints and notes that do not apply to golong's colocated engine.
    ("vllm", r"torch\.set_num_threads|is not found in LD_PRELOAD|Triton is (not )?installed|requires Triton"),
    ("vllm", r"Reset SSM cache type|The global random seed is set to"),
]

_console_format = logging.Formatter("[golong] %(message)s")
_file_format = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def is_verbose(verbose: bool = False) -> bool:
    return verbose or os.environ.get("GOLONG_VERBOSE", "") not in ("", "0")


def quiet_imports(verbose: bool = False) -> None:
    """Settings the libraries read when they are imported: call before importing DeepSpeed or vLLM."""
    if is_verbose(verbose):
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed warns when it has to guess
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs through our handlers (setup_console)
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class _Known(logging.Filter):
    """Passes the records that are not known to be harmless (those go to the log file only)."""

    def __init__(self):
        super().__init__()
        known = QUIET_RECORDS + [("py.warnings", message) for _, message in QUIET_WARNINGS]
        self.patterns = [(name, re.compile(message)) for name, message in known]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(record.name.startswith(name) and p.search(text) for name, p in self.patterns)


def setup_console(log_dir: str | None, rank: int, verbose: bool = False) -> str | None:
    """golong's lines on rank 0's console (warnings from every rank); third-party loggers to the log file
    in full and to the console only for unknown warnings. Returns the log file (None when verbose)."""
    golong = logging.getLogger("golong")
    golong.handlers.clear()
    golong.propagate = False
    golong.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_console_format if rank == 0 else logging.Formatter(f"[golong rank {rank}] %(message)s"))
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    golong.addHandler(console)
    if is_verbose(verbose) or log_dir is None:
        return None

    os.makedirs(log_dir, exist_ok=True)
    log_file = os.path.join(log_dir, f"rank{rank}.log")
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(_file_format)
    golong.addHandler(to_file)
    quiet = logging.StreamHandler(sys.stderr)
    quiet.setLevel(logging.WARNING)
    quiet.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    quiet.addFilter(_Known())
    for name in ("vllm", "DeepSpeed", "py.warnings"):
        third_party = logging.getLogger(name)
        third_party.handlers.clear()  # DeepSpeed's own stdout handler, if it was imported already
        third_party.propagate = False
        third_party.setLevel(logging.INFO)
        third_party.addHandler(to_file)
        third_party.addHandler(quiet)
    logging.captureWarnings(True)  # Python warnings -> the "py.warnings" logger: file, and console if unknown
    for category, message in QUIET_WARNINGS:  # now logged to the file rather than dropped
        warnings.filterwarnings("default", message=message, category=category)
    return log_file


def run_command(args) -> int:
    """Run a parsed command (`args.func(args)`, argparse). The one error path of every command: a user's mistake (bad recipe, bad data, missing file) is one
    line naming the fix and exit status 2; anything else is a bug and keeps its traceback."""
    from golong.configlib import ConfigError, UsageError
    from golong.data.schema import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, UsageError, FileNotFoundError) as e:
        print(f"golong: error: {e}", file=sys.stderr)
        return 2
