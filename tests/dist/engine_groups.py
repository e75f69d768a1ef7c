"""Prompt-once groups and group-token-mean (Eq. 4) under torchrun: one batch as 1 rank x 4 micro-batches
or 2 ranks x 2, with one group split into two units that land on different ranks. Two steps (the second
reuses the first step's old log-probs, so ratios move off 1); IcePop masking on. Rank 0 writes the
gathered weights, grad norms and losses.

    torchrun --nproc_per_node={1,2} tests/dist/engine_groups.py MODEL_DIR OUT_FILE
"""
import sys

import torch.distributed as dist

from engine_common import one_group, random_samples, tiny_engine, train_two_steps_and_save
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]
GROUPS = [(6, [(7, 1.0), (1, -1.0), (3, 0.5), (5, -0.5)]),  # (prompt length, [(response length, advantage)])
          (9, [(2, 1.5), (4, -1.5)]),
          (3, [(8, 0.25), (6, -0.25), (1, 1.0)])]
UNITS = [[0, 1], [2, 3], [4, 5], [6, 7], [8]]  # response indices over the groups: group 0 split in two units
SPLITS = {  # micro-batches of unit indices, per rank
    1: [[[0], [1, 2], [3], [4]]],
    2: [[[0], [3]], [[1, 2], [4]]],
}

engine = tiny_engine(MODEL_DIR, lr=1e-3, loss=PolicyLossConfig(agg_mode="group-token-mean"),
                     icepop=IcePopConfig(mode="mask"))
rank, world = dist.get_rank(), dist.get_world_size()
groups = [one_group(random_samples([(prompt_len, r, a) for r, a in responses], seed=10 + group_id, rollout_noise=0.5),
                    group_id) for group_id, (prompt_len, responses) in enumerate(GROUPS)]
where = [(g, k) for g in groups for k in range(len(g))]  # response i: (its group, its position there)
units = [where[u[0]][0].select([where[i][1] for i in u]) for u in UNITS]
my_batches = SPLITS[world][rank]
my_units = [units[u] for mb in my_batches for u in mb]
micro_batches = [pack_groups([units[u] for u in mb]) for mb in my_batches]
train_two_steps_and_save(engine, micro_batches, my_units, "group-token-mean", OUT_FILE)
