"""2 CPU ranks, ZeRO-3, the tiny model: save / resume / export, dumping what tests/test_checkpoint.py checks.

Run A trains steps 1-4 (batches drawn from each rank's global torch RNG, so a wrong RNG restore changes
the data), checkpointing after steps 2, 3 and 4 with keep_last=2, and exports the model after step 4.
Run B builds a fresh engine from the initial weights, scrambles every RNG, loads the step-3 checkpoint
and replays step 4. Both runs dump weights, optimizer state, losses, learning rates and RNG draws.

    torchrun --nproc_per_node=2 tests/dist/ckpt_resume_export.py MODEL_DIR OUT_DIR
"""
import json
import os
import random
import sys

import deepspeed
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import HfDeepSpeedConfig

from golong.trainer.checkpoint import Checkpointer, RunState
from golong.trainer.export import export_hf

MODEL_DIR, OUT_DIR = sys.argv[1], sys.argv[2]
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 3},
    "zero_allow_untested_optimizer": True,  # torch AdamW: no fused op to JIT-build
    "steps_per_print": 10**9,
}


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_engine():
    hf_ds = HfDeepSpeedConfig(DS_CONFIG)  # noqa: F841 - must be alive during from_pretrained (ZeRO-3 init)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=warmup, config=DS_CONFIG)
    return engine


def train_step(engine):
    ids = torch.randint(0, engine.module.config.vocab_size, (1, 24))  # from this rank's global RNG
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    return loss.item()


def gathered_weights(engine):
    """Full parameters (rank 0), gathered with ZeRO-3."""
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: p.detach().clone() for name, p in params.items()}


def optimizer_state(engine):
    """This rank's fp32 master partitions and their Adam state (moments, step count)."""
    zero = engine.optimizer
    out = {}
    for i, master in enumerate(zero.fp32_partitioned_groups_flat):
        out[f"{i}.master"] = master.detach().clone()
        for key, value in zero.optimizer.state[master].items():
            out[f"{i}.{key}"] = torch.as_tensor(value).detach().clone().reshape(-1)
    return out


def draws():
    return {"python": random.random(), "numpy": float(np.random.rand()), "torch": torch.rand(2).tolist()}


def dump(tag, engine, summary):
    weights = gathered_weights(engine)
    if rank == 0:
        save_file(weights, os.path.join(OUT_DIR, f"weights_{tag}.safetensors"))
    save_file(optimizer_state(engine), os.path.join(OUT_DIR, f"optim_{tag}_rank{rank}.safetensors"))
    summary[f"lr_{tag}"] = engine.lr_scheduler.get_last_lr()


deepspeed.init_distributed(dist_backend="gloo")
rank = torch.distributed.get_rank()
run_dir = os.path.join(OUT_DIR, "run")
ckpt = Checkpointer(run_dir, keep_last=2)
summary = {"listing": {}}

# Run A: uninterrupted.
seed_everything(100 + rank)
engine = build_engine()
summary["loss_a"] = [train_step(engine), train_step(engine)]
for step in (2, 3):
    if step == 3:
        summary["loss_a"].append(train_step(engine))
    ckpt.save(engine, RunState(step=step, sampler={"epoch": 0, "position": 8 * step}, extra={"seen": [1, step]}))
    summary["listing"][step] = sorted(os.listdir(ckpt.root))
dump("a3", engine, summary)
summary["loss_a"].append(train_step(engine))
dump("a4", engine, summary)
summary["draws_a"] = draws()
ckpt.save(engine, RunState(step=4, sampler={"epoch": 0, "position": 32}))
summary["listing"][4] = sorted(os.listdir(ckpt.root))
summary["latest"] = ckpt.latest()
export_hf(engine.module, AutoTokenizer.from_pretrained(MODEL_DIR), os.path.join(run_dir, "hf"), max_shard_size="1MB")

# Run B: a fresh engine from the initial weights, every RNG scrambled, resumed from step 3.
seed_everything(999)
engine = build_engine()
state = ckpt.load(os.path.join(ckpt.root, "step_000003"), engine)
summary["state_b"] = {"step": state.step, "sampler": state.sampler, "extra": state.extra}
dump("b3", engine, summary)
summary["loss_b4"] = train_step(engine)
dump("b4", engine, summary)
summary["draws_b"] = draws()

with open(os.path.join(OUT_DIR, f"summary_rank{rank}.json"), "w") as f:
    json.dump(summary, f, indent=1)
