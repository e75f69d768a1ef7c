"""One process, no torchrun (world size 1), ZeRO-3: the gradient of a packed micro-batch against the
same sequences one by one through the engine, and against plain transformers run sequence by sequence.

    python tests/dist/engine_packed_grad.py MODEL_DIR OUT_FILE
"""
import sys

import torch
from deepspeed.utils import safe_get_full_grad
from transformers import AutoModelForCausalLM

from engine_common import random_samples, sequence_ids, tiny_engine
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, PolicyLossConfig
from golong.trainer.loss import LossDenominator, LossInputs, policy_loss

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]
TEMPERATURE = 0.8


def full_grads(engine):
    return {name: safe_get_full_grad(p).detach().clone().cpu() for name, p in engine.module.named_parameters()}


# Loaded before the engine: while a ZeRO-3 engine lives, from_pretrained builds sharded models.
reference = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
engine = tiny_engine(MODEL_DIR, lr=1e-3, warmup_steps=4, temperature=TEMPERATURE)
samples = random_samples([(5, 7, 1.0), (9, 3, -1.0), (1, 11, 0.5), (6, 4, -0.25, 0.0)], seed=0)
denom = LossDenominator.build(samples, "token-mean", world=engine.world)

old_packed = engine.old_logprobs(pack_groups(samples)).cpu()
engine.forward_backward(pack_groups(samples), denom)
packed = full_grads(engine)
for sample in samples:  # the same sequences again, one micro-batch each: the gradient doubles
    engine.forward_backward(pack_groups([sample]), denom)
twice = full_grads(engine)
engine.forward_backward(pack_groups([]), denom)  # a filler micro-batch adds nothing
after_filler = full_grads(engine)
step = engine.optimizer_step()

# plain transformers, one sequence at a time, the same loss
ref_logps = []
for sample in samples:
    ids = sequence_ids(sample)
    logits = reference(ids).logits[0] / TEMPERATURE
    log_p = torch.log_softmax(logits[len(sample.prompt_ids) - 1:-1], -1)
    ref_logps.append(log_p.gather(1, ids[0, len(sample.prompt_ids):, None])[:, 0])
mb = pack_groups(samples)
logp = torch.cat(ref_logps)
loss = policy_loss(LossInputs(logp=logp, old_logp=logp.detach(), advantages=mb.advantages, token_mask=mb.loss_mask,
                              seq_index=mb.seq_index), PolicyLossConfig(), IcePopConfig(mode="off"), denom)
loss.backward()
reference_grads = {name: p.grad.clone() for name, p in reference.named_parameters()}

torch.save({"packed": packed, "twice": twice, "after_filler": after_filler, "reference": reference_grads,
            "old_logprobs": old_packed, "reference_logprobs": logp.detach(), "step": step.__dict__}, OUT_FILE)
engine.close()
