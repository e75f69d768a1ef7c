"""Colocated vLLM rollout: group generation, weight sync from the trainer, sleep/wake.

Names are imported on first use, so `import golong.rollout.config` (every config load) does not
import torch or vLLM.
"""
from __future__ import annotations

from golong.lazy import lazy_exports

_EXPORTS = {
    "RolloutBatch": "golong.rollout.batch",
    "logprob_abs_diff": "golong.rollout.batch",
    "RolloutConfig": "golong.rollout.config",
    "RolloutEngine": "golong.rollout.engine",
    "SyncStats": "golong.rollout.weight_sync",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
