"""Packed against padded micro-batches on the tiny model: real-token fraction, step time, speedup.

One long-tailed batch: sequence lengths log-uniform over a 1,024x range (16 .. 16,384 tokens: the
paper's 0.1K-160K prompts, Table 12, scaled down 10x), the last quarter of each sequence being the
response. One step = forward + backward of sum(response log-probs) over all micro-batches
(the optimizer step is the same for both and left out).

- packed: `plan_micro_batches` with a 16,384-token budget, `pack_groups`, exact per-sequence attention
  (`golong_per_sequence`, the CPU path of the engine), LM head on response tokens only.
- padded: the common alternative, a fixed number of sequences per micro-batch in arrival order,
  right-padded to the longest; causal SDPA over the padded rows (right padding needs no mask).

    PYTHONPATH=. .venv/bin/python bench/packing.py                 # --sequences 32 --per-micro-batch 4
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from golong.tiny_model import build_tiny_model
from golong.trainer.attention import PER_SEQUENCE, packed_attention_kwargs
from golong.trainer.batch import Group, pack_groups
from golong.trainer.logprobs import token_logprobs
from golong.trainer.packing import plan_micro_batches


def long_tailed_batch(n: int, low: int, high: int, seed: int, vocab: int) -> list[Group]:
    """`n` prompt + response sequences (single-response Groups)."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        length = int(low * (high / low) ** rng.random())
        response = max(1, length // 4)
        ids = [rng.randrange(vocab) for _ in range(length)]
        samples.append(Group(prompt_ids=ids[:length - response], response_ids=[ids[length - response:]], advantages=1.0))
    return samples


def packed_step(model, samples, max_tokens) -> tuple[float, int]:
    """Seconds for forward + backward of every packed micro-batch, and the tokens computed."""
    plan = plan_micro_batches([s.num_tokens for s in samples], max_tokens, dp_size=1)[0]
    computed = 0
    start = time.perf_counter()
    for indices in plan:
        mb = pack_groups([samples[i] for i in indices])
        hidden = model.model(mb.input_ids, position_ids=mb.position_ids,
                             **packed_attention_kwargs(mb.cu_seqlens, mb.max_seqlen)).last_hidden_state[0]
        token_logprobs(hidden[mb.logit_positions], model.lm_head.weight, mb.labels).sum().backward()
        computed += mb.num_tokens
    return time.perf_counter() - start, computed


def padded_step(model, samples, per_micro_batch) -> tuple[float, int]:
    computed = 0
    start = time.perf_counter()
    for first in range(0, len(samples), per_micro_batch):
        group = samples[first:first + per_micro_batch]
        width = max(s.num_tokens for s in group)
        rows = torch.zeros(len(group), width, dtype=torch.long)  # right padding: causal rows never see it
        positions, labels = [], []
        for r, s in enumerate(group):
            prompt, response = s.prompt_ids.tolist(), s.response_ids[0].tolist()
            ids = prompt + response
            rows[r, :len(ids)] = torch.tensor(ids)
            positions += [(r, len(prompt) - 1 + t) for t in range(len(response))]
            labels += response
        hidden = model.model(rows).last_hidden_state
        index = torch.tensor(positions)
        token_logprobs(hidden[index[:, 0], index[:, 1]], model.lm_head.weight, torch.tensor(labels)).sum().backward()
        computed += rows.numel()
    return time.perf_counter() - start, computed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=16_384)
    parser.add_argument("--max-tokens", type=int, default=16_384, help="packed micro-batch token budget")
    parser.add_argument("--per-micro-batch", type=int, default=4, help="padded: sequences per micro-batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = build_tiny_model(tempfile.mkdtemp(prefix="golong_bench_") + "/model")
    packed_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=PER_SEQUENCE)
    padded_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    samples = long_tailed_batch(args.sequences, args.min_len, args.max_len, args.seed, packed_model.config.vocab_size)
    real = sum(s.num_tokens for s in samples)
    print(f"{len(samples)} sequences, {real} tokens, lengths {min(s.num_tokens for s in samples)}.."
          f"{max(s.num_tokens for s in samples)}; torch threads {torch.get_num_threads()}")

    for dp_size in (1, 2, 8):
        plan = plan_micro_batches([s.num_tokens for s in samples], args.max_tokens, dp_size)
        loads = [sum(samples[i].num_tokens for mb in rank for i in mb) for rank in plan]
        fillers = sum(not mb for rank in plan for mb in rank)
        computed = real + 2 * fillers  # a filler micro-batch computes 2 tokens
        print(f"plan dp={dp_size}: {len(plan[0])} micro-batches per rank, {fillers} fillers, "
              f"rank load max/min {max(loads) / max(min(loads), 1):.3f}, real-token fraction {real / computed:.4f}")

    timings = {}
    for name, step in (("packed", lambda: packed_step(packed_model, samples, args.max_tokens)),
                       ("padded", lambda: padded_step(padded_model, samples, args.per_micro_batch))):
        runs = [step() for _ in range(args.repeats)]
        timings[name] = (min(seconds for seconds, _ in runs), runs[0][1])
    for name, (seconds, computed) in timings.items():
        print(f"{name:>7}: real-token fraction {real / computed:.3f}  step {seconds:7.2f} s  ({computed} tokens computed)")
    print(f"speedup packed vs padded: {timings['padded'][0] / timings['packed'][0]:.2f}x")


if __name__ == "__main__":
    main()
