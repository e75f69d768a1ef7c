"""ZeRO-3 on 2 ranks trains the tiny model the way the loop will drive it: plan_micro_batches over the
global batch (rank loads balanced, equal micro-batch counts), old and reference log-probs once, then
4 updates with the old log-probs held fixed (so the surrogate can fall), k3 KL to the frozen reference,
IcePop truncation. Rank 0 writes what tests/test_engine.py checks.

    torchrun --nproc_per_node=2 tests/dist/engine_train.py MODEL_DIR OUT_FILE
"""
import json
import sys

import torch
import torch.distributed as dist

from engine_common import gathered_weights, random_samples, tiny_engine
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.loss import LossDenominator, PolicyLossStats
from golong.world import current_world
from golong.trainer.packing import plan_micro_batches

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]
SHAPES = [(3, 6, 1.0), (8, 4, -1.0), (5, 9, 1.0), (2, 3, -1.0), (12, 5, 1.0), (4, 4, -1.0), (6, 10, 1.0), (9, 2, -1.0), (3, 3, 1.0)]

engine = tiny_engine(MODEL_DIR, lr=2e-3, warmup_steps=2, loss=PolicyLossConfig(kl_coef=0.05),
                     icepop=IcePopConfig(mode="truncate"))
rank, world = dist.get_rank(), dist.get_world_size()
samples = random_samples(SHAPES, seed=5, rollout_noise=0.05)
plan = plan_micro_batches([s.num_tokens for s in samples], max_tokens=24, dp_size=world)
my_samples = [samples[i] for mb in plan[rank] for i in mb]
micro_batches = [pack_groups([samples[i] for i in mb]) for mb in plan[rank]]  # one sequence per sample
for mb in micro_batches:
    mb.old_logprobs = engine.old_logprobs(mb)
    mb.ref_logprobs = engine.ref_logprobs(mb)
initial = gathered_weights(engine.module)

history = []
for _ in range(4):
    denom = LossDenominator.build(my_samples, "token-mean", world=engine.world)
    stats = sum((engine.forward_backward(mb, denom) for mb in micro_batches), PolicyLossStats()).all_reduce(engine.world)
    step = engine.optimizer_step()
    history.append({**stats.metrics(), "grad_norm": step.grad_norm, "lr": step.lr, "tokens": step.tokens,
                    "packing_efficiency": step.packing_efficiency})

final = gathered_weights(engine.module)
# how the log-probs of positive- and negative-advantage responses moved, summed over ranks
moved = {1.0: [0.0, 0.0], -1.0: [0.0, 0.0]}  # advantage -> [sum of log-prob change, tokens]
for mb in micro_batches:
    change = (engine.old_logprobs(mb) - mb.old_logprobs).cpu()
    for sign in moved:
        tokens = (mb.advantages == sign) & (mb.loss_mask > 0)
        moved[sign][0] += change[tokens].sum().item()
        moved[sign][1] += tokens.sum().item()
pos_sum, pos_n, neg_sum, neg_n = current_world().all_reduce_sum([*moved[1.0], *moved[-1.0]])
checksum = torch.tensor([sum(w.double().sum().item() for w in final.values())], dtype=torch.float64)
checksums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
dist.all_gather(checksums, checksum)
if rank == 0:
    with open(OUT_FILE, "w") as f:
        json.dump({
            "history": history,
            "micro_batches_per_rank": [len(p) for p in plan],
            "rank_tokens": [sum(samples[i].num_tokens for mb in p for i in mb) for p in plan],
            "max_weight_change": max((final[n] - initial[n]).abs().max().item() for n in final),
            "rank_checksums": [c.item() for c in checksums],
            "positive_logprob_change": pos_sum / pos_n, "negative_logprob_change": neg_sum / neg_n,
        }, f)
engine.close()
