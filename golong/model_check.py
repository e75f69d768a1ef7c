"""Is `model.path` (or `--model`, `--model2`) something transformers and vLLM can load? Asked before anything starts.

A model path is either a local HF model folder (config.json, tokenizer files, weights) or a hub id
(`namespace/name`). Transformers takes an existing folder as local and anything else as a hub id, so:

- a path that exists, or that cannot be a hub id (`/abs/path`, `./x`, `a/b/c`), must be a model folder;
- a hub id in the local HF cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) is fine;
- a hub id not in the cache is fine online (transformers downloads it when the run starts: a warning says so),
  and refused offline (HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1), where it cannot load. Offline, a cached
  snapshot must also be complete (the folder checks below).

No network call is made here: the cache is asked with huggingface_hub's own `snapshot_download(...,
local_files_only=True)`. Loading errors that only the load itself finds (an unknown model_type, a corrupt
tokenizer.json or safetensors file) are turned into the same one-line ConfigError by `load_tokenizer` and
`model_load_errors`, the one place golong loads a model's config, tokenizer and weights through.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from contextlib import contextmanager

from golong.configlib import ConfigError, invalid

logger = logging.getLogger(__name__)

# A tokenizer needs a vocabulary: a fast tokenizer.json, a sentencepiece/tiktoken model, or vocab files.
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
EXAMPLE = "a hub id such as Qwen/Qwen3-4B-Thinking-2507"


def check_model_path(path: str, key: str = "model.path", weights: bool = True) -> None:
    """Refuse a model path that cannot possibly load, as the one-line ConfigError `KEY: why. Fix: ...`.
    `key` is what the user typed (`model.path`, `--model`, `--model2`); `weights=False` for a command that
    only needs the tokenizer."""
    if os.path.exists(path) or not _is_hub_id(path):
        check_model_folder(path, key, weights)
        return
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE: the rule transformers follows
    try:
        snapshot = snapshot_download(path, local_files_only=True)
    except LocalEntryNotFoundError:
        if offline:
            raise invalid(key, f"{path!r} is not a local folder and not in the local HF cache "
                          f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE forbids downloading it",
                          f"download it first (`hf download {path}`) with network, unset HF_HUB_OFFLINE and "
                          "TRANSFORMERS_OFFLINE, or point it at a local model folder") from None
        if os.environ.get("RANK", "0") == "0":
            logger.warning("%s: %s is not a local folder and not in the local HF cache: transformers downloads it "
                           "from the hub when the run starts", key, path)
        return
    if offline:  # online, transformers fetches whatever a partial snapshot lacks
        check_model_folder(snapshot, key, weights, shown=f"{path!r} (cached at {snapshot})")


def check_model_folder(folder: str, key: str, weights: bool = True, shown: str | None = None) -> None:
    """The files an HF model folder needs: config.json (a JSON object), a tokenizer vocabulary, and weights."""
    shown = shown or repr(folder)
    fix = f"point {key} at an HF model folder (config.json, tokenizer and weights) or {EXAMPLE}"
    if not os.path.exists(folder):
        raise invalid(key, f"{shown} does not exist", fix)
    if not os.path.isdir(folder):
        raise invalid(key, f"{shown} is a file, not a model folder", fix)
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise invalid(key, f"{shown} has no config.json, so it is not an HF model folder", fix)
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(key, f"{config_file} cannot be read as JSON ({gist(e)})",
                      "restore the model's config.json (re-download or re-export it)") from None
    if not isinstance(config, dict):
        raise invalid(key, f"{config_file} is not a JSON object", "restore the model's config.json")
    if not _matches(folder, TOKENIZER_PATTERNS):
        raise invalid(key, f"{shown} has no tokenizer files ({', '.join(TOKENIZER_PATTERNS)})",
                      "copy the tokenizer of the base model into the folder (tokenizer.save_pretrained), or point "
                      f"{key} at a folder that has one")
    if weights and not _matches(folder, WEIGHT_PATTERNS):
        raise invalid(key, f"{shown} has no weights ({', '.join(WEIGHT_PATTERNS)})",
                      f"point {key} at a complete model folder (golong export writes one from a run)")


def load_tokenizer(path: str, key: str = "model.path", trust_remote_code: bool = False):
    """The model's tokenizer, its config loaded first (AutoTokenizer alone does not read an unknown model_type),
    so a model that would fail later fails here, before any engine starts, as one line naming `key`."""
    from transformers import AutoConfig, AutoTokenizer

    with model_load_errors(path, key):
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


@contextmanager
def model_load_errors(path: str, key: str = "model.path"):
    """Turn what transformers raises for model files it cannot load (OSError, ValueError, a corrupt
    safetensors file) into the one-line ConfigError naming `key`, the original message's gist kept."""
    from safetensors import SafetensorError

    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError, SafetensorError) as e:
        raise invalid(key, f"transformers cannot load {path!r}: {type(e).__name__}: {gist(e)}",
                      f"repair or re-download the model, or point {key} at another HF model folder or {EXAMPLE}") from e


def gist(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters."""
    text = " ".join(str(error).split()).rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_hub_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _matches(folder: str, patterns: tuple[str, ...]) -> bool:
    return any(glob.glob(os.path.join(glob.escape(folder), p)) for p in patterns)
