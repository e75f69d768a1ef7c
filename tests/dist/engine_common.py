"""Shared by the tests/dist/engine_*.py scripts: a tiny PolicyEngine, deterministic samples, gathered weights."""
from __future__ import annotations

import deepspeed
import torch
import torch.distributed as dist

from golong.trainer.batch import TrainSample
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.engine import PolicyEngine
from golong.trainer.loss import LossDenominator, PolicyLossStats


def tiny_engine(model_dir: str, *, lr=1e-3, warmup_steps=0, loss=None, icepop=None, temperature=1.0) -> PolicyEngine:
    return PolicyEngine(ModelConfig(path=model_dir), TrainerConfig(lr=lr, warmup_steps=warmup_steps),
                        loss or PolicyLossConfig(), icepop or IcePopConfig(mode="off"), temperature)


def random_samples(shapes, seed: int, vocab: int = 500, rollout_noise: float | None = None) -> list[TrainSample]:
    """One TrainSample per (prompt length, response length, advantage[, loss_weight]); the same on every rank.
    With `rollout_noise`, rollout log-probs scatter around the tiny model's ~log(1/576)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for prompt_len, response_len, advantage, *weight in shapes:
        rollout = None
        if rollout_noise is not None:
            rollout = -6.36 + rollout_noise * torch.randn(response_len, generator=g)
        samples.append(TrainSample(torch.randint(0, vocab, (prompt_len,), generator=g).tolist(),
                                   torch.randint(0, vocab, (response_len,), generator=g).tolist(),
                                   advantage, rollout, *weight))
    return samples


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


def two_steps(engine: PolicyEngine, micro_batches, my_samples, agg_mode: str) -> list[dict]:
    """Two optimizer steps over the same micro-batches (old log-probs set by the caller stay fixed, so the
    second step runs off-policy); per step the all-reduced loss statistics, grad norm and denominator."""
    history = []
    for _ in range(2):
        denom = LossDenominator.build(my_samples, agg_mode, world=engine.world)
        stats = sum((engine.forward_backward(mb, denom) for mb in micro_batches), PolicyLossStats()).all_reduce(engine.world)
        step = engine.optimizer_step()
        history.append({"loss": stats.loss, "grad_norm": step.grad_norm, "masked": stats.icepop_masked,
                        "clipped": stats.clipped_low + stats.clipped_high, "tokens": stats.tokens,
                        "denominator": denom.value, "group_tokens": group_tokens(denom)})
    return history


def train_two_steps_and_save(engine: PolicyEngine, micro_batches, my_samples, agg_mode: str, out_file: str) -> None:
    """The split-invariance scripts' common end: old log-probs from the current weights, two_steps, and rank 0
    saves {"history", "weights"} (the weights gathered from every ZeRO-3 shard)."""
    for mb in micro_batches:
        mb.old_logprobs = engine.old_logprobs(mb)
    history = two_steps(engine, micro_batches, my_samples, agg_mode)
    weights = gathered_weights(engine.module)
    if dist.get_rank() == 0:
        torch.save({"history": history, "weights": weights}, out_file)
    engine.close()
