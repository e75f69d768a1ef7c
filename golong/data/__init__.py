"""Data: the row schema, loaders for native rows and released GoLongRL records, prompt building,
prompt sampling, and the dataset tools (decontamination, calibration, statistics, demo data).

    data = load_examples(cfg.data.train_files, cfg.data)             # LoadedData; DataError on a bad row
    prompts = encode_prompts(data.examples, tokenizer, cfg.data)      # PromptIds: prompts[i] is a list[int]
    kept = filter_long_prompts(data.examples, prompts, cfg.data.max_prompt_length)
    sampler = PromptSampler(len(kept.examples), cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)

Names are imported on first use, so `import golong.data.config` (every config load) stays light.
"""
from __future__ import annotations

from golong.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "golong.data.config",
    "DataError": "golong.data.schema",
    "Example": "golong.data.schema",
    "TASKS": "golong.data.schema",
    "LoadedData": "golong.data.loader",
    "load_examples": "golong.data.loader",
    "PromptIds": "golong.data.prompts",
    "FilteredPrompts": "golong.data.prompts",
    "encode_prompts": "golong.data.prompts",
    "filter_long_prompts": "golong.data.prompts",
    "PromptSampler": "golong.data.sampler",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
