"""Prompt-once groups against one sequence per response: tokens computed and seconds for the
old-log-prob pass + the update, on the tiny model, in the same run.

One long-tailed batch shaped like the paper's (Table 12 scaled down 10x): prompts log-uniform over
1K-16K tokens, G = 8 responses each of 100-1,000 tokens (uniform). Both modes pack with
`plan_units` + `plan_micro_batches` under the same token budget and run the engine's forward
(`LogProbModel`, the CPU SDPA attention) with the LM head on response tokens only.

- off (share_prompt=false, the old path): one prompt+response sequence per response; the separate
  old-log-prob pass (no grad), then forward + backward.
- on  (share_prompt=true, ppo_epochs 1): units [prompt, r_1..r_k]; no separate old-log-prob pass
  (the update's forward gives them); forward + backward.

The optimizer step is the same for both and left out. The log-probs of both modes are compared.

    PYTHONPATH=. .venv/bin/python bench/prompt_once.py              # --prompts 4 --group 8
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from golong.tiny_model import build_tiny_model
from golong.trainer.attention import PER_SEQUENCE
from golong.trainer.batch import Group, pack_groups
from golong.trainer.engine import LogProbModel
from golong.trainer.packing import plan_micro_batches, plan_units


def long_tailed_groups(prompts: int, group: int, prompt_range, response_range, seed: int, vocab: int):
    rng = random.Random(seed)
    groups = []
    for g in range(prompts):
        length = int(prompt_range[0] * (prompt_range[1] / prompt_range[0]) ** rng.random())
        prompt = [rng.randrange(vocab) for _ in range(length)]
        responses, advantages = [], []
        for _ in range(group):
            responses.append([rng.randrange(vocab) for _ in range(rng.randint(*response_range))])
            advantages.append(rng.choice([-1.0, 1.0]))
        groups.append(Group(prompt_ids=prompt, response_ids=responses, advantages=advantages, group_id=g))
    return groups


def run_mode(model: LogProbModel, groups: list[Group], max_tokens: int, share_prompt: bool) -> dict:
    units = plan_units(groups, max_tokens, share_prompt)
    plan = plan_micro_batches([u.num_tokens for u in units], max_tokens, 1)[0]
    mbs = [pack_groups([units[u] for u in mb]) for mb in plan]
    # each response as (group_id, position in its group), in row order
    order = [(units[u].group_id, int(i)) for mb in plan for u in mb for i in units[u].response_index]
    lengths = {(g.group_id, i): len(r) for g in groups for i, r in enumerate(g.response_ids)}
    inputs = [(mb.input_ids, mb.position_ids, mb.cu_seqlens, mb.max_seqlen, mb.cu_segments, mb.logit_positions,
               mb.labels) for mb in mbs]
    tokens = sum(mb.num_tokens for mb in mbs)
    old_s = 0.0
    if not share_prompt:  # the old path's separate old-log-prob pass
        start = time.perf_counter()
        with torch.no_grad():
            for args in inputs:
                model(*args)
        old_s = time.perf_counter() - start
    start = time.perf_counter()
    logps = []
    for mb, args in zip(mbs, inputs):
        logp = model(*args)
        (logp * mb.advantages).sum().backward()
        logps.append(logp.detach())
    update_s = time.perf_counter() - start
    # per-response log-probs by (group, position), to compare the modes
    per_sample, offset = {}, 0
    flat = torch.cat(logps)
    for key in order:
        n = lengths[key]
        per_sample[key] = flat[offset:offset + n]
        offset += n
    return {"tokens": tokens * (1 if share_prompt else 2), "update_tokens": tokens, "old_s": old_s,
            "update_s": update_s, "seconds": old_s + update_s, "micro_batches": len(mbs),
            "prompt_passes": len(units), "logp": per_sample}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--min-prompt", type=int, default=1024)
    parser.add_argument("--max-prompt", type=int, default=16384)
    parser.add_argument("--min-response", type=int, default=100)
    parser.add_argument("--max-response", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = build_tiny_model(tempfile.mkdtemp(prefix="golong-bench-"))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=PER_SEQUENCE)
    model = LogProbModel(hf, temperature=1.0, chunk_size=1024)
    groups = long_tailed_groups(args.prompts, args.group, (args.min_prompt, args.max_prompt),
                                (args.min_response, args.max_response), args.seed, hf.config.vocab_size)
    prompt_tokens = sum(len(g.prompt_ids) for g in groups)
    response_tokens = sum(int(g.response_lengths.sum()) for g in groups)
    print(f"batch: {args.prompts} prompts ({prompt_tokens} tokens, {args.min_prompt}-{args.max_prompt} log-uniform) "
          f"x {args.group} responses ({response_tokens} tokens, {args.min_response}-{args.max_response}); "
          f"budget {args.max_tokens} tokens/micro-batch; {torch.get_num_threads()} threads")
    run_mode(model, groups[:1], args.max_tokens, True)  # warm-up
    model.zero_grad()
    off = run_mode(model, groups, args.max_tokens, share_prompt=False)
    model.zero_grad()
    on = run_mode(model, groups, args.max_tokens, share_prompt=True)
    assert on["logp"].keys() == off["logp"].keys()
    diff = max((on["logp"][k] - off["logp"][k]).abs().max().item() for k in on["logp"] if len(on["logp"][k]))
    print(f"{'mode':<22}{'tokens':>10}{'prompt passes':>15}{'micro-batches':>15}{'old-logp s':>12}{'update s':>10}{'total s':>10}")
    for name, r in (("share_prompt off", off), ("share_prompt on", on)):
        print(f"{name:<22}{r['tokens']:>10}{r['prompt_passes']:>15}{r['micro_batches']:>15}"
              f"{r['old_s']:>12.2f}{r['update_s']:>10.2f}{r['seconds']:>10.2f}")
    print(f"on vs off: {off['tokens'] / on['tokens']:.2f}x fewer tokens (update pass alone "
          f"{off['update_tokens'] / on['update_tokens']:.2f}x), {off['seconds'] / on['seconds']:.2f}x less time "
          f"(update pass alone {off['update_s'] / on['update_s']:.2f}x); max |logp on - logp off| = {diff:.2e}")


if __name__ == "__main__":
    main()
