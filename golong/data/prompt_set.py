"""The prompts of a run, loaded once: every row of the files checked, templated, tokenized and
length-filtered. The training prompts (golong/trainer/loop.py: load_prompt_set) and the validation prompts
(golong/trainer/validate.py) are read alike."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from golong.data.loader import load_examples
from golong.data.prompts import PromptIds, encode_prompts, filter_long_prompts
from golong.data.schema import Example
from golong.world import World

logger = logging.getLogger("golong")


@dataclass
class PromptSet:
    """A run's prompts (training or validation), loaded, templated and length-filtered once before the first step."""

    examples: list[Example]
    prompts: PromptIds  # prompts[i] are the token ids of examples[i]
    tasks: list[str]  # the task names present, sorted; a response's task id indexes this list
    num_dropped_long: int  # longer than data.max_prompt_length
    num_bad_rows: int  # skipped by data.on_bad_row=skip


def read_prompt_set(files: list[str], data_cfg, tokenizer, world: World, what: str = "data") -> PromptSet:
    """Load and check every row of `files`, template and tokenize the prompts, drop the overlong ones: the
    training prompts (loop.load_prompt_set) and the validation prompts (golong/trainer/validate.py) alike."""
    loaded = load_examples(files, data_cfg)
    prompts = encode_prompts(loaded.examples, tokenizer, data_cfg)
    kept = filter_long_prompts(loaded.examples, prompts, data_cfg.max_prompt_length)
    if world.is_main:
        logger.info("%s: %d prompts (%s); %d longer than data.max_prompt_length=%d dropped; %d bad rows skipped",
                    what, len(kept.examples), loaded.task_counts(), kept.num_dropped, data_cfg.max_prompt_length,
                    loaded.num_bad_rows_skipped)
    return PromptSet(examples=kept.examples, prompts=kept.prompts, tasks=sorted({e.task for e in kept.examples}),
                     num_dropped_long=kept.num_dropped, num_bad_rows=loaded.num_bad_rows_skipped)
