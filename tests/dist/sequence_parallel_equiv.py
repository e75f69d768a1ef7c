"""Sequence parallelism under torchrun: the same global micro-batches trained by ranks in SP groups
(trainer.sequence_parallel_size = SP) or one by one; rank 0 writes per-sample log-probs and entropies,
loss statistics, every parameter's full gradient and the weights after one AdamW step.

    torchrun --nproc_per_node=N tests/dist/sequence_parallel_equiv.py MODEL_DIR OUT_FILE SP [ZERO_STAGE]

The tiny model has 2 query heads and 1 KV head, so sp = 2 repeats the KV head (fewer KV heads than sp).
Micro-batches (sample indices) and what they exercise at sp = 2:
  [0, 1]  25 tokens: the row needs one filler token of padding; a response straddles the shard edge
  [2, 3]  6 + 6 tokens: a sequence boundary exactly on the shard edge
  [4]     5 + 5 tokens: the prompt ends the first shard, so the first response token sits in the next one
  [5]     7 + 3 tokens: every response token is predicted in the second shard; the first has none
  []      a zero-weight filler micro-batch (2 tokens, one per shard)
  [6 7 8] one prompt-once unit: a 7-token prompt and its 3 responses (3, 1, 4 tokens), 15 tokens with
          one filler; the prompt and the first response span the shard edge
"""
import sys

import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad

from engine_common import gathered_weights, one_group, random_samples
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.world import init_world
from golong.trainer.engine import PolicyEngine
from golong.trainer.loss import LossDenominator, PolicyLossStats

MODEL_DIR, OUT_FILE, SP = sys.argv[1], sys.argv[2], int(sys.argv[3])
ZERO_STAGE = int(sys.argv[4]) if len(sys.argv) > 4 else 3
SHAPES = [(5, 7, 1.0), (9, 4, -1.0), (3, 3, 0.5), (4, 2, -0.5), (5, 5, 1.5), (7, 3, -1.5),
          (7, 3, 1.0), (7, 1, -1.0), (7, 4, 0.5)]  # 6-8 share one prompt (below)
MICRO_BATCHES = [[[0], [1]], [[2], [3]], [[4]], [[5]], [], [[6, 7, 8]]]  # micro-batches of units of samples
LOSS = PolicyLossConfig(agg_mode="seq-mean-token-mean", entropy_coef=0.01)
ICEPOP = IcePopConfig(mode="mask", veto=1e-3)

world = init_world()
engine = PolicyEngine(ModelConfig(path=MODEL_DIR),
                      TrainerConfig(lr=1e-3, warmup_steps=0, zero_stage=ZERO_STAGE, sequence_parallel_size=SP),
                      LOSS, ICEPOP, temperature=0.9)
layout = engine.layout
samples = random_samples(SHAPES, seed=5, rollout_noise=0.7)


def unit_of(indices):
    """A unit of samples: one sample as it is; several as one prompt group under the first one's prompt
    (6-8: packed prompt-once)."""
    return samples[indices[0]] if len(indices) == 1 else one_group([samples[i] for i in indices])


# the global micro-batches spread over the SP groups (dp = world / sp) with the same planner shape as
# the loop: group g gets micro-batches g, g + dp, ... (plus fillers so every group runs as many)
per_group = [MICRO_BATCHES[g::layout.dp_size] for g in range(layout.dp_size)]
count = max(map(len, per_group))
mine = per_group[layout.dp_rank] + [[]] * (count - len(per_group[layout.dp_rank]))
my_units = [[unit_of(unit) for unit in mb] for mb in mine]
micro_batches = [pack_groups(units) for units in my_units]
my_units = [u for units in my_units for u in units]
mine = [[i for unit in mb for i in unit] for mb in mine]  # each micro-batch's samples, in row order


def per_sample(values, mb_indices, mb):
    """{sample index: its response tokens' values} of one micro-batch."""
    return {i: values[mb.seq_index == k].detach().cpu() for k, i in enumerate(mb_indices)}


logps, entropies = {}, {}
for indices, mb in zip(mine, micro_batches):
    with torch.no_grad():
        logp, entropy = engine._run(engine.ds_engine, mb.to(engine.device), with_entropy=True)
    mb.old_logprobs = engine.old_logprobs(mb)
    assert torch.equal(mb.old_logprobs, logp)
    logps.update(per_sample(logp, indices, mb))
    entropies.update(per_sample(entropy, indices, mb))

history, grads = [], None
for step in range(2):  # the second step reuses the first one's old log-probs: ratios move off 1
    # [SP] the SP group's units counted once: on its first rank only
    denom = LossDenominator.build(my_units if layout.counts_once else [], LOSS.agg_mode, world=engine.world)
    stats = sum((engine.forward_backward(mb, denom) for mb in micro_batches), PolicyLossStats()).all_reduce(engine.world)
    if step == 0:
        grads = {n: safe_get_full_grad(p).detach().clone().cpu() for n, p in engine.module.named_parameters()}
    result = engine.optimizer_step()
    history.append({"loss": stats.loss, "tokens": stats.tokens, "sequences": stats.sequences,
                    "masked": stats.icepop_masked, "entropy": stats.entropy, "grad_norm": result.grad_norm,
                    "denominator": denom.value})
    if step == 0:
        weights = gathered_weights(engine.module)

gathered = world.all_gather_objects((logps, entropies))
if world.rank == 0:
    all_logps = {i: v for part, _ in gathered for i, v in part.items()}
    all_entropies = {i: v for _, part in gathered for i, v in part.items()}
    torch.save({"logps": all_logps, "entropies": all_entropies, "grads": grads, "weights": weights,
                "history": history, "layout": [layout.sp, layout.dp_size]}, OUT_FILE)
engine.close()
