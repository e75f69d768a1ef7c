"""One process, ZeRO-3 (world size 1): one AdamW update with zero gradients changes each parameter by
weight decay alone, so it shows which parameters the optimizer decays.

    python tests/dist/engine_weight_decay.py MODEL_DIR OUT_FILE
"""
import sys

import torch

from engine_common import gathered_weights, random_samples
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.engine import PolicyEngine
from golong.trainer.loss import LossDenominator

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]
LR, WEIGHT_DECAY = 1e-2, 0.1

engine = PolicyEngine(ModelConfig(path=MODEL_DIR), TrainerConfig(lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=0),
                      PolicyLossConfig(), IcePopConfig(mode="off"), 1.0)
before = gathered_weights(engine.module)
samples = random_samples([(5, 7, 0.0), (3, 4, 0.0)], seed=0)  # advantage 0: the loss has no gradient
engine.forward_backward(pack_groups(samples), LossDenominator.build(samples, "token-mean", world=engine.world))
engine.optimizer_step()
after = gathered_weights(engine.module)
torch.save({"before": before, "after": after, "lr": LR, "weight_decay": WEIGHT_DECAY}, OUT_FILE)
engine.close()
