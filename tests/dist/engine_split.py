"""Split invariance under torchrun: one batch as 1 rank x 4 micro-batches, or 2 ranks x 2 micro-batches
(one of them an empty filler). Two steps: the first on-policy, the second reusing the first step's
old log-probs (ratios move off 1, clipping engages); IcePop masking on, seq-mean-token-mean.
Rank 0 writes the gathered weights, grad norms and losses.

    torchrun --nproc_per_node={1,2} tests/dist/engine_split.py MODEL_DIR OUT_FILE
"""
import sys

import torch.distributed as dist

from engine_common import random_samples, tiny_engine, train_two_steps_and_save
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]
SHAPES = [(5, 7, 1.0), (9, 3, -1.0), (2, 11, 0.5), (6, 4, -0.5), (3, 9, 1.5), (8, 2, -1.5), (4, 6, 0.25, 0.0), (7, 5, 1.0)]
SPLITS = {  # micro-batches of sample indices, per rank
    1: [[[0, 5], [1, 2, 3], [4], [6, 7]]],
    2: [[[0, 1, 2], [3]], [[4, 5, 6, 7], []]],
}

engine = tiny_engine(MODEL_DIR, lr=1e-3, loss=PolicyLossConfig(agg_mode="seq-mean-token-mean"),
                     icepop=IcePopConfig(mode="mask"))
rank, world = dist.get_rank(), dist.get_world_size()
samples = random_samples(SHAPES, seed=3, rollout_noise=0.5)
my_batches = SPLITS[world][rank]
my_samples = [samples[i] for mb in my_batches for i in mb]
micro_batches = [pack_groups([samples[i] for i in mb]) for mb in my_batches]  # one sequence per sample
train_two_steps_and_save(engine, micro_batches, my_samples, "seq-mean-token-mean", OUT_FILE)
