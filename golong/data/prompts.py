"""Examples -> prompt token ids (the model's chat template) and the prompt-length filter.

    prompts = encode_prompts(examples, tokenizer, cfg)          # PromptIds: prompts[i] is a list[int]
    kept = filter_long_prompts(examples, prompts, cfg.max_prompt_length)
    kept.examples, kept.prompts, kept.num_dropped               # log num_dropped

The ids are held as one flat int32 array with offsets rather than a list of Python lists: 23K
prompts of up to 160K tokens would take tens of GiB as Python ints, and ~4 bytes a token here.
Indexing still gives a plain `list[int]`, which is what the rollout engine takes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from golong.data.config import DataConfig
from golong.data.schema import Example

_ENCODE_CHUNK = 64  # prompts per tokenizer call (the fast tokenizer batches them)


class PromptIds(Sequence):
    """Token ids of many prompts: `ids[i]` is prompt i as a list[int]; `lengths` its token counts."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat  # (total_tokens,) int32
        self.offsets = offsets  # (num_prompts + 1,) int64; prompt i is flat[offsets[i]:offsets[i+1]]

    @property
    def lengths(self) -> np.ndarray:  # (num_prompts,)
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.view(i).tolist()

    def view(self, i: int) -> np.ndarray:
        """Prompt i as an int32 view of the flat array (no copy): what the trainer's Groups hold."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"prompt {i} out of range ({len(self)} prompts)")
        i %= len(self)
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def select(self, indices: Sequence[int]) -> PromptIds:
        """The prompts at `indices`, in that order."""
        pieces = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in indices]
        return _concat(pieces)


def _concat(pieces: list[np.ndarray]) -> PromptIds:
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
    flat = np.concatenate(pieces).astype(np.int32, copy=False) if pieces else np.zeros(0, dtype=np.int32)
    return PromptIds(flat, offsets)


def render_prompt(example: Example, tokenizer, enable_thinking: bool) -> str:
    """The chat-templated prompt text, ending with the assistant's generation header."""
    return tokenizer.apply_chat_template(
        example.messages, add_generation_prompt=True, enable_thinking=enable_thinking, tokenize=False)


def encode_prompts(examples: list[Example], tokenizer, cfg: DataConfig) -> PromptIds:
    """Chat-template and tokenize every example (add_generation_prompt=True, cfg.enable_thinking).

    Same ids as `apply_chat_template(..., tokenize=True)`: the template's special tokens are in the
    rendered text, which is tokenized without adding any more.
    """
    chunks: list[np.ndarray] = []
    bar = tqdm(total=len(examples), desc="tokenizing prompts", unit="prompt", disable=len(examples) < 1000)
    for start in range(0, len(examples), _ENCODE_CHUNK):
        texts = [render_prompt(e, tokenizer, cfg.enable_thinking) for e in examples[start:start + _ENCODE_CHUNK]]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            chunks.append(np.asarray(ids, dtype=np.int32))
        bar.update(len(texts))
    bar.close()
    return _concat(chunks)


@dataclass
class FilteredPrompts:
    examples: list[Example]
    prompts: PromptIds  # prompts[i] belongs to examples[i]
    num_dropped: int  # prompts longer than the limit


def filter_long_prompts(examples: list[Example], prompts: PromptIds, max_prompt_length: int) -> FilteredPrompts:
    """Drop the prompts longer than `max_prompt_length` tokens (data.max_prompt_length); count them."""
    keep = np.flatnonzero(prompts.lengths <= max_prompt_length)
    return FilteredPrompts(
        examples=[examples[i] for i in keep],
        prompts=prompts.select(keep.tolist()),
        num_dropped=len(examples) - len(keep),
    )
