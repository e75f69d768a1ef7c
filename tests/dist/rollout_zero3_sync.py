"""2 CPU ranks, each a DeepSpeed ZeRO-3 trainer and a colocated vLLM engine (external_launcher, TP 1),
on the tiny model with tied embeddings. Dumps what tests/test_rollout_zero3.py checks, per rank:

1. greedy continuations of fixed prompts before any training;
2. three AdamW steps (lr 1e-2) on a fixed target, then `sync_weights(engine.module)`;
3. vLLM's greedy continuations after the sync, and transformers' greedy continuations with the
   ZeRO-3 parameters gathered and rounded to bf16 (the engine's dtype), run in float32;
4. four sampled responses per prompt (T = 1) with vLLM's log-probs and transformers' log-probs of
   the same tokens under the same gathered weights (and, for contrast, under the initial weights).

    torchrun --nproc_per_node=2 tests/dist/rollout_zero3_sync.py MODEL_DIR OUT_DIR
"""
import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout_reference import greedy, round_to_bf16, token_logprobs  # noqa: E402

from golong.rollout import RolloutConfig, RolloutEngine, logprob_abs_diff  # noqa: E402
from golong.rollout.weight_sync import is_partitioned  # noqa: E402

MODEL_DIR, OUT_DIR = sys.argv[1], sys.argv[2]
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 7, 300, 12, 60, 61, 62, 63, 64]]
TARGET = list(range(200, 224))  # what the trainer is taught, so its weights surely move
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3},
    "zero_allow_untested_optimizer": True,  # torch AdamW: no fused op to JIT-build
    "steps_per_print": 10**9,
}


def build_trainer():
    """The ZeRO-3 engine; the HF model is partitioned from the start (only while hf_ds lives)."""
    hf_ds = HfDeepSpeedConfig(DS_CONFIG)  # noqa: F841 - must be alive during from_pretrained (ZeRO-3 init)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=DS_CONFIG)
    return trainer


def main():
    deepspeed.init_distributed(dist_backend="gloo")
    trainer = build_trainer()
    params = dict(trainer.module.named_parameters())

    # eager: no torch.compile warm-up (tests/test_rollout_engine.py covers the compiled engine)
    cfg = RolloutConfig(n=4, max_response_length=8, gpu_memory_utilization=0.3, sync_bucket_mb=1, seed=7,
                        enforce_eager=True)
    rollout = RolloutEngine(cfg, MODEL_DIR, max_model_len=64)
    before = rollout.generate(PROMPTS, n=1, temperature=0.0).response_ids

    ids = torch.tensor([TARGET])
    for _ in range(3):
        loss = trainer(input_ids=ids, labels=ids).loss
        trainer.backward(loss)
        trainer.step()

    stats = rollout.sync_weights(trainer.module)
    after = rollout.generate(PROMPTS, n=1, temperature=0.0).response_ids
    sampled = rollout.generate(PROMPTS)

    with deepspeed.zero.GatheredParameters(list(params.values())):
        gathered = {name: p.detach().clone() for name, p in params.items()}
    reference = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(gathered[name])
    round_to_bf16(reference)

    rollout_lp = torch.cat([torch.tensor(lp, dtype=torch.float64) for lp in sampled.logprobs])

    def reference_lp(model):
        return torch.cat([token_logprobs(model, PROMPTS[i], r, 1.0)
                          for i, r in zip(sampled.prompt_index, sampled.response_ids)])

    trainer_lp = reference_lp(reference)
    stale = round_to_bf16(AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval())
    result = {
        "world": dist.get_world_size(),
        "dp": [rollout.layout.rollout_dp_rank, rollout.layout.rollout_dp_size],
        "all_partitioned": all(is_partitioned(p) for p in params.values()),
        "tied": trainer.module.lm_head.weight is trainer.module.model.embed_tokens.weight,
        "param_names": list(params),
        "before": before,
        "after": after,
        "reference_after": [greedy(reference, p, 8) for p in PROMPTS],
        "sync": {"seconds": stats.seconds, "peak_extra_bytes": stats.peak_extra_bytes,
                 "num_buckets": stats.num_buckets},
        "sampled_prompt_index": sampled.prompt_index,
        "logprob_abs_diff_max": (trainer_lp - rollout_lp).abs().max().item(),
        "logprob_abs_diff": logprob_abs_diff(trainer_lp, rollout_lp),
        "logprob_abs_diff_stale": logprob_abs_diff(reference_lp(stale), rollout_lp),  # what a missed sync shows
    }
    with open(os.path.join(OUT_DIR, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)
    rollout.close()  # last: vLLM's shutdown also destroys the default process group


if __name__ == "__main__":
    main()
