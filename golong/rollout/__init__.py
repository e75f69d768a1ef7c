"""Colocated vLLM rollout: group generation, weight sync from the trainer, sleep/wake.

Names are imported on first use, so `import golong.rollout.config` (every config load) does not
import torch or vLLM.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "RolloutBatch": "golong.rollout.batch",
    "logprob_abs_diff": "golong.rollout.batch",
    "RolloutConfig": "golong.rollout.config",
    "RolloutEngine": "golong.rollout.engine",
    "SyncStats": "golong.rollout.weight_sync",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'golong.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
