"""Shared by the tests/dist/engine_*.py scripts: a tiny PolicyEngine, deterministic samples (Groups), gathered weights."""
from __future__ import annotations

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from golong.trainer.batch import Group
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.engine import PolicyEngine
from golong.trainer.loss import LossDenominator, PolicyLossStats


def tiny_engine(model_dir: str, *, lr=1e-3, warmup_steps=0, loss=None, icepop=None, temperature=1.0) -> PolicyEngine:
    return PolicyEngine(ModelConfig(path=model_dir), TrainerConfig(lr=lr, warmup_steps=warmup_steps),
                        loss or PolicyLossConfig(), icepop or IcePopConfig(mode="off"), temperature)


def random_samples(shapes, seed: int, vocab: int = 500, rollout_noise: float | None = None) -> list[Group]:
    """One single-response Group per (prompt length, response length, advantage[, loss_weight]); the same on
    every rank. `pack_groups` of them is one plain `prompt + response` sequence each. With `rollout_noise`,
    rollout log-probs scatter around the tiny model's ~log(1/576)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for prompt_len, response_len, advantage, *weight in shapes:
        rollout = None
        if rollout_noise is not None:
            rollout = [(-6.36 + rollout_noise * torch.randn(response_len, generator=g)).numpy()]
        samples.append(Group(prompt_ids=torch.randint(0, vocab, (prompt_len,), generator=g).numpy(),
                             response_ids=[torch.randint(0, vocab, (response_len,), generator=g).numpy()],
                             advantages=advantage, rollout_logprobs=rollout, loss_weights=weight[0] if weight else 1.0))
    return samples


def one_group(samples: list[Group], group_id: int = -1) -> Group:
    """Single-response Groups (random_samples) as one prompt group: every response under the first one's prompt."""
    return Group(prompt_ids=samples[0].prompt_ids, response_ids=[s.response_ids[0] for s in samples],
                 advantages=[s.advantages[0] for s in samples], loss_weights=[s.loss_weights[0] for s in samples],
                 rollout_logprobs=(None if samples[0].rollout_logprobs is None
                                   else [s.rollout_logprobs[0] for s in samples]),
                 group_id=group_id)


def sequence_ids(sample: Group) -> torch.Tensor:
    """(1, P + R) int64: a single-response Group's prompt + response as one sequence."""
    return torch.from_numpy(np.concatenate([sample.prompt_ids, sample.response_ids[0]]).astype(np.int64))[None]


def gathered_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of ZeRO-3 sharded parameters (every rank must call this)."""
    out = {}
    for name, param in module.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            out[name] = param.detach().clone().cpu()
    return out


def group_tokens(denom: LossDenominator) -> dict[int, float] | None:
    """group-token-mean's response tokens per group_id (None for the other modes)."""
    if denom.group_ids is None:
        return None
    return dict(zip(denom.group_ids.tolist(), denom.group_tokens.tolist()))


def two_steps(engine: PolicyEngine, micro_batches, my_units: list[Group], agg_mode: str) -> list[dict]:
    """Two optimizer steps over the same micro-batches (old log-probs set by the caller stay fixed, so the
    second step runs off-policy); per step the all-reduced loss statistics, grad norm and denominator
    (built from this rank's units)."""
    history = []
    for _ in range(2):
        denom = LossDenominator.build(my_units, agg_mode, world=engine.world)
        stats = sum((engine.forward_backward(mb, denom) for mb in micro_batches), PolicyLossStats()).all_reduce(engine.world)
        step = engine.optimizer_step()
        history.append({"loss": stats.loss, "grad_norm": step.grad_norm, "masked": stats.icepop_masked,
                        "clipped": stats.clipped_low + stats.clipped_high, "tokens": stats.tokens,
                        "denominator": denom.value, "group_tokens": group_tokens(denom)})
    return history


def train_two_steps_and_save(engine: PolicyEngine, micro_batches, my_units: list[Group], agg_mode: str,
                             out_file: str) -> None:
    """The split-invariance scripts' common end: old log-probs from the current weights, two_steps, and rank 0
    saves {"history", "weights"} (the weights gathered from every ZeRO-3 shard)."""
    for mb in micro_batches:
        mb.old_logprobs = engine.old_logprobs(mb)
    history = two_steps(engine, micro_batches, my_units, agg_mode)
    weights = gathered_weights(engine.module)
    if dist.get_rank() == 0:
        torch.save({"history": history, "weights": weights}, out_file)
    engine.close()
