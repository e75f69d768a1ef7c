"""One process, no torchrun (world size 1), ZeRO-3 with gradient checkpointing and the MoE block as a
ZeRO-3 leaf: router replay through PolicyEngine against plain transformers replaying the same routes.

    python tests/dist/engine_router_replay.py MOE_MODEL_DIR OUT_FILE
"""
import dataclasses
import sys

import torch
from deepspeed.utils import safe_get_full_grad
from transformers import AutoModelForCausalLM

from engine_common import random_samples
from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs
from golong.trainer.batch import pack
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.engine import LogProbModel, PolicyEngine
from golong.trainer.loss import LossDenominator, LossInputs, policy_loss
from golong.trainer.router_replay import global_agreement, own_routes
from golong.world import current_world

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]

# Loaded before the engine: while a ZeRO-3 engine lives, from_pretrained builds sharded models.
reference = LogProbModel(AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32,
                                                              attn_implementation=PER_SEQUENCE), 1.0, 64)
samples = random_samples([(5, 7, 1.0), (9, 3, -1.0), (6, 4, -0.5)], seed=0)
with_own, with_foreign = [], []
for s in samples:
    ids = torch.tensor([s.prompt_ids + s.response_ids[:-1]])
    n = ids.shape[1]
    own = own_routes(reference.model, ids, **packed_attention_kwargs(torch.tensor([0, n], dtype=torch.int32), n))  # (P+R-1, L, k)
    with_own.append(dataclasses.replace(s, routes=own))
    with_foreign.append(dataclasses.replace(s, routes=((own.long() + 3) % 8).to(own.dtype)))
mb_plain, mb_own, mb_foreign = pack(samples), pack(with_own), pack(with_foreign)
denom = LossDenominator.build(samples, "token-mean", world=current_world())  # before any process group: a world of one

# plain transformers replaying the foreign routes on the packed row: log-probs and the loss's gradient
ref_logp = reference(mb_foreign.input_ids, mb_foreign.position_ids, mb_foreign.cu_seqlens, mb_foreign.max_seqlen,
                     mb_foreign.cu_segments, mb_foreign.logit_positions, mb_foreign.labels, routes=mb_foreign.routes,
                     routes_counted=mb_foreign.routes_counted)
loss = policy_loss(LossInputs(logp=ref_logp, old_logp=ref_logp.detach(), advantages=mb_foreign.advantages,
                              token_mask=mb_foreign.loss_mask, seq_index=mb_foreign.seq_index),
                   PolicyLossConfig(), IcePopConfig(mode="off"), denom)
loss.backward()
reference_grads = {name: p.grad.clone() for name, p in reference.model.named_parameters()}

engine = PolicyEngine(ModelConfig(path=MODEL_DIR, gradient_checkpointing=True,
                                  zero3_leaf_modules=["Qwen3MoeSparseMoeBlock"]),
                      TrainerConfig(lr=1e-3, warmup_steps=0), PolicyLossConfig(), IcePopConfig(mode="off"), 1.0)
replay = engine.ds_engine.module.router_replay
plain = engine.old_logprobs(mb_plain).cpu()
own = engine.old_logprobs(mb_own).cpu()
own_agreement = global_agreement(replay.agreement)
foreign = engine.old_logprobs(mb_foreign).cpu()
foreign_agreement = global_agreement(replay.agreement)
engine.forward_backward(mb_foreign, denom)
grads = {name: safe_get_full_grad(p).detach().clone().cpu() for name, p in engine.module.named_parameters()}
checkpointing = [layer.gradient_checkpointing and layer.training for layer in engine.module.model.layers]

torch.save({"plain": plain, "own": own, "foreign": foreign, "reference_foreign": ref_logp.detach(),
            "own_agreement": own_agreement, "foreign_agreement": foreign_agreement, "grads": grads,
            "reference_grads": reference_grads, "checkpointing": checkpointing}, OUT_FILE)
engine.close()
