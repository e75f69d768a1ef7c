"""Config of the dataset: which files, how prompts are built and filtered, how batches are drawn."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from golong.configlib import invalid, option


@dataclass
class DataConfig:
    train_files: list[str] = option([], "Training files: native rows or released GoLongRL records (.jsonl or .parquet).")
    format: Literal["auto", "native", "released"] = option("auto", "Row format; auto tells native rows from released (verl) records per file.")
    prompts_per_step: int = option(128, "Prompts drawn per training step (Table 12: 128); each gets rollout.n responses.")
    max_prompt_length: int = option(163840, "Prompts longer than this many tokens are dropped, counted and logged (Table 12: 160K).")
    max_rows: int = option(0, "Train on a fixed random subset of this many rows (paper: 8,000 of 23K for the 4B runs); 0 uses all rows.")
    subset_seed: int = option(0, "Seed of the max_rows subset: the same files and seed give the same rows in every run and on every rank.")
    on_bad_row: Literal["error", "skip"] = option("error", "A malformed row stops loading (error) or is skipped and counted (skip).")
    shuffle: bool = option(True, "Draw prompts in a fresh random order every epoch (uniform sampling, paper Eq. 4).")
    seed: int = option(1, "Seed of the prompt order; with the checkpointed position it makes resumed runs see the same batches.")
    enable_thinking: bool = option(True, "Passed to the chat template (Qwen3 thinking models open <think> in the prompt).")
    val_files: list[str] = option([], "Validation files (trainer.val_every), in the formats of train_files: templated, tokenized and length-filtered as training prompts; max_rows does not subset them.")

    def validate(self) -> None:
        if self.prompts_per_step < 1:
            raise invalid("prompts_per_step", f"must be at least 1, got {self.prompts_per_step}", "set a positive batch size")
        if self.max_rows < 0:
            raise invalid("max_rows", f"must be >= 0, got {self.max_rows}", "use 0 for all rows, or e.g. 8000")
        if 0 < self.max_rows < self.prompts_per_step:
            raise invalid("max_rows", f"{self.max_rows} rows cannot fill one step of prompts_per_step={self.prompts_per_step}",
                          "raise max_rows (or 0 for all rows), or lower prompts_per_step")
        if self.max_prompt_length < 1:
            raise invalid("max_prompt_length", f"must be positive, got {self.max_prompt_length}", "set the longest prompt in tokens")
        fix = "list existing .jsonl or .parquet files (paths relative to where golong runs), or set data.val_files=[]"
        for path in self.val_files:
            if not os.path.exists(path):
                raise invalid("val_files", f"{path!r} does not exist", fix)
            if os.path.isdir(path):
                raise invalid("val_files", f"{path!r} is a folder, not a file", fix)
            if not path.lower().endswith((".jsonl", ".parquet")):
                raise invalid("val_files", f"{path!r} is neither .jsonl nor .parquet", fix)
