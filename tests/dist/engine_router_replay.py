"""One process, no torchrun (world size 1), ZeRO-3 with gradient checkpointing and the MoE block as a
ZeRO-3 leaf: router replay through PolicyEngine against plain transformers replaying the same routes.

    python tests/dist/engine_router_replay.py MOE_MODEL_DIR OUT_FILE
"""
import dataclasses
import sys

import numpy as np
import torch
from deepspeed.utils import safe_get_full_grad
from transformers import AutoModelForCausalLM

from engine_common import random_samples
from golong.replay.trainer import global_agreement, own_routes, pack_unit_routes
from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs
from golong.trainer.batch import pack_groups
from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
from golong.trainer.engine import LogProbModel, PolicyEngine
from golong.trainer.loss import LossDenominator, LossInputs, policy_loss
from golong.world import current_world

MODEL_DIR, OUT_FILE = sys.argv[1], sys.argv[2]

# Loaded before the engine: while a ZeRO-3 engine lives, from_pretrained builds sharded models.
reference = LogProbModel(AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32,
                                                              attn_implementation=PER_SEQUENCE), 1.0, 64)
samples = [dataclasses.replace(s, response_index=[i])  # responses 0, 1, 2 of the step
           for i, s in enumerate(random_samples([(5, 7, 1.0), (9, 3, -1.0), (6, 4, -0.5)], seed=0))]
own_of, foreign_of = {}, {}  # response index -> (P+R-1, L, k)
for i, s in enumerate(samples):
    ids = torch.from_numpy(np.concatenate([s.prompt_ids, s.response_ids[0][:-1]]).astype(np.int64))[None]
    n = ids.shape[1]
    own_of[i] = own_routes(reference.model, ids, **packed_attention_kwargs(torch.tensor([0, n], dtype=torch.int32), n))
    foreign_of[i] = ((own_of[i].long() + 3) % 8).to(own_of[i].dtype)


def packed(routes_of=None):
    mb = pack_groups(samples)
    if routes_of is not None:  # router replay's packer, as the planner's RouteExtras does it
        routes, counted = pack_unit_routes(samples, routes_of)
        mb.extras = {"routes": routes, "routes_counted": counted}
    return mb


mb_plain, mb_own, mb_foreign = packed(), packed(own_of), packed(foreign_of)
denom = LossDenominator.build(samples, "token-mean", world=current_world())  # before any process group: a world of one

# plain transformers replaying the foreign routes on the packed row: log-probs and the loss's gradient
ref_logp = reference(mb_foreign.input_ids, mb_foreign.position_ids, mb_foreign.cu_seqlens, mb_foreign.max_seqlen,
                     mb_foreign.cu_segments, mb_foreign.logit_positions, mb_foreign.labels, **mb_foreign.extras)
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
own_agreement = global_agreement(replay.agreement, engine.world)
foreign = engine.old_logprobs(mb_foreign).cpu()
foreign_agreement = global_agreement(replay.agreement, engine.world)
engine.forward_backward(mb_foreign, denom)
grads = {name: safe_get_full_grad(p).detach().clone().cpu() for name, p in engine.module.named_parameters()}
checkpointing = [layer.gradient_checkpointing and layer.training for layer in engine.module.model.layers]

torch.save({"plain": plain, "own": own, "foreign": foreign, "reference_foreign": ref_logp.detach(),
            "own_agreement": own_agreement, "foreign_agreement": foreign_agreement, "grads": grads,
            "reference_grads": reference_grads, "checkpointing": checkpointing}, OUT_FILE)
engine.close()
