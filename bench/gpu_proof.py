"""GPU proof: golong's CUDA paths on one real GPU (an H200), in one prepared call of at most ~8 minutes.

    bash bench/gpu_proof.sh                      # on the GPU machine: installs carried wheels, then runs this
    python bench/gpu_proof.py --out $OUT         # the same without the wheel step
    python bench/gpu_proof.py --tiny --out DIR   # every section with tiny shapes on CPU (what the tests run)

Models are random-init Qwen3 configs written below (nothing is downloaded): Qwen3-4B's shape (36 layers,
hidden 2560, intermediate 9728, 32 query / 8 key-value heads of 128, vocab 151,936, tied embeddings:
4.02 B parameters) and a shortened variant (same widths, fewer layers) where a section only needs the
kernels. Sections, each run in its own process with its own time box, so a crash, an OOM or a timeout in
one leaves the others' figures; each flushes its JSON after every measurement:

  logprobs   `token_logprobs` at T = 32K and 128K tokens, V = 151,936, H = 2560, bf16: forward and
             backward time, peak memory above the inputs; at T = 8K also the naive [T, V] log-softmax
             (baseline in the same run: its time, memory and max |difference| of log-probs and gradients).
  attention  one packed bf16 row of several sequences through a shortened Qwen3-4B: golong's CUDA varlen
             attention vs per-sequence SDPA on the same row vs each sequence run alone (max |difference|
             of response log-probs, and time); prompt-once groups (flex block mask) vs replicated packing.
  prompt_once_grad  the gradients of prompt-once training: one prompt and its responses as one unit (CUDA:
             the flex block mask, compiled forward AND backward) vs the same responses packed one
             prompt+response each through the exact per-sequence SDPA path; fp32, a 2-layer model of
             Qwen3-4B's widths (vocab cut to 32K): max |difference| of log-probs and of every parameter's
             gradient relative to that gradient's largest entry.
  train_step one packed bf16 training step through golong's PolicyEngine on its default CUDA path
             (trainer.share_prompt on, attention auto -> flex; DeepSpeed ZeRO-3 on 1 GPU, gradient
             checkpointing) for the full Qwen3-4B shape at 16K and 32K tokens per micro-batch: tokens/s,
             MFU, peak memory; then one group (8K prompt, 8 responses of 1K) trained as one prompt-once
             unit vs replicated per response (time and tokens). MFU = 6 x N x tokens / step seconds / 989e12, N = all parameters
             (4.02e9), 989 TFLOP/s = H100/H200 dense bf16 peak; model FLOPs only: the attention's
             T^2 term and the recomputation of gradient checkpointing are not counted, so it understates
             the hardware's work.
  long_seq   the longest single sequence one GPU trains for Qwen3-4B's shape (varlen attention, gradient checkpointing,
             ZeRO-3 states on the same GPU): 64K, 128K, 176K tokens (16K of them response), stopping at the
             first OOM; peak memory and step time of each.

Results: $OUT/gpu_proof.json (every figure, versions, device) and $OUT/gpu_proof.txt (the same, readable).
--tiny uses tiny shapes and the CPU (float32 where bf16 has no fast CPU kernels) so that the tests can run
every section's code path; its figures are real measurements of those tiny shapes, not of the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16 (no sparsity)

# Qwen3-4B(-Thinking-2507)'s architecture; the weights are random.
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                max_position_embeddings=262144, rope_theta=5_000_000.0, rms_norm_eps=1e-6)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=8192,
            rope_theta=10000.0, rms_norm_eps=1e-6)

# Shapes per mode: (real run, --tiny)
SHAPES = {
    "logprobs_tokens": ([32768, 131072], [256, 1024]),
    "logprobs_baseline_tokens": (8192, 128),
    "logprobs_hidden_vocab": ((2560, 151936), (64, 512)),
    "logprobs_chunk": (1024, 64),
    "attention_layers": (4, 2),
    "attention_lengths": ([6144, 3072, 1536, 512, 4096], [96, 48, 24, 8, 64]),  # prompt+response, packed in one row
    "attention_response": (512, 8),
    "prompt_once_group": ((16384, 8, 1024), (48, 4, 6)),  # (prompt tokens, responses, tokens per response)
    "grad_group": ((2048, 4, 256), (40, 3, 5)),  # prompt-once gradient check: (prompt, responses, response tokens)
    "grad_vocab": (32768, 512),
    "train_tokens": ([16384, 32768], [256, 512]),
    "train_sequences": (8, 4),  # sequences per packed micro-batch
    "train_group": ((8192, 8, 1024), (64, 4, 16)),  # one prompt-once group: (prompt, responses, response tokens)
    "long_lengths": ([65536, 131072, 180224], [256, 512, 1024]),
    "long_response": (16384, 64),
}

# Seconds per section (the parent kills a section that runs over); the whole run stays under ~8 minutes.
BUDGET_S = {"logprobs": 45, "attention": 60, "prompt_once_grad": 60, "prepare_model": 75, "train_step": 150,
            "long_seq": 170}
SECTIONS = ["logprobs", "attention", "prompt_once_grad", "train_step", "long_seq"]


def shape(name: str, tiny: bool):
    return SHAPES[name][1 if tiny else 0]


# ------------------------------------------------------------------------------------------------
# Output: one JSON per section, flushed after every measurement


class Recorder:
    """A section's figures, rewritten to OUT/section_<name>.json after every `put`."""

    def __init__(self, out_dir: str, section: str):
        self.path = os.path.join(out_dir, f"section_{section}.json")
        self.data: dict = {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------
# Device helpers


def device(tiny: bool):
    import torch

    return torch.device("cpu") if tiny or not torch.cuda.is_available() else torch.device("cuda", 0)


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def allocated(dev) -> int:
    import torch

    return torch.cuda.memory_allocated(dev) if dev.type == "cuda" else rss_bytes("VmRSS")


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak(dev) -> int:
    """CUDA: peak allocated since reset_peak. CPU: the process's resident high-water mark (coarse)."""
    import torch

    return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else rss_bytes("VmHWM")


def rss_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def gib(n: float) -> float:
    return round(n / 2**30, 3)


def qwen3_config(tiny: bool, layers: int | None = None, attn_implementation: str | None = None):
    from transformers import Qwen3Config

    spec = dict(TINY if tiny else QWEN3_4B)
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = Qwen3Config(**spec)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return config


def cuda_attention_choice() -> str:
    """golong's packed attention on this GPU: flash-attn if installed, else PyTorch's varlen kernel, else
    (a torch without torch.nn.attention.varlen) the exact per-sequence SDPA loop."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "torch_varlen" if importlib.util.find_spec("torch.nn.attention.varlen") is not None else "per_sequence"


# ------------------------------------------------------------------------------------------------
# Section: token_logprobs at Qwen3's vocabulary


def section_logprobs(rec: Recorder, tiny: bool) -> None:
    import torch

    from golong.trainer.logprobs import token_logprobs

    dev = device(tiny)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    hidden_size, vocab = shape("logprobs_hidden_vocab", tiny)
    chunk = shape("logprobs_chunk", tiny)
    rec.put("setup", {"device": str(dev), "dtype": str(dtype), "hidden": hidden_size, "vocab": vocab,
                      "chunk_size": chunk})
    g = torch.Generator(device=dev).manual_seed(0)
    weight = (torch.randn(vocab, hidden_size, generator=g, device=dev) * 0.02).to(dtype).requires_grad_()

    def inputs(tokens: int):
        hidden = torch.randn(tokens, hidden_size, generator=g, device=dev).to(dtype).requires_grad_()
        labels = torch.randint(0, vocab, (tokens,), generator=g, device=dev)
        return hidden, labels

    def measure(tokens: int, fn) -> dict:
        hidden, labels = inputs(tokens)
        weight.grad = None
        sync(dev)
        before = allocated(dev)
        reset_peak(dev)
        start = time.perf_counter()
        logp = fn(hidden, labels)
        sync(dev)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        logp.sum().backward()
        sync(dev)
        backward_s = time.perf_counter() - start
        result = {"tokens": tokens, "forward_s": round(forward_s, 4), "backward_s": round(backward_s, 4),
                  "peak_extra_bytes": peak(dev) - before, "peak_extra_gib": gib(peak(dev) - before),
                  "naive_logits_fp32_gib": gib(tokens * vocab * 4)}  # what one [T, V] fp32 tensor would take
        out = (logp.detach().float(), hidden.grad.float(), weight.grad.float())
        del hidden, logp
        return result, out

    def chunked(hidden, labels):
        return token_logprobs(hidden, weight, labels, chunk_size=chunk)

    def naive(hidden, labels):
        logits = (hidden @ weight.T).float()
        return torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]

    # Baseline in the same run, where the naive path fits: same inputs through both.
    base_tokens = shape("logprobs_baseline_tokens", tiny)
    for fn in (chunked, naive):  # warm-up, untimed: CUDA context, cuBLAS handles, the allocator's first blocks
        measure(base_tokens, fn)
    g.manual_seed(1)
    fast, (lp_a, gh_a, gw_a) = measure(base_tokens, chunked)
    g.manual_seed(1)  # the same hidden states and labels again
    slow, (lp_b, gh_b, gw_b) = measure(base_tokens, naive)
    rec.put("baseline", {"tokens": base_tokens, "chunked": fast, "naive": slow,
                         "memory_ratio_naive_over_chunked": round(slow["peak_extra_bytes"] / max(fast["peak_extra_bytes"], 1), 2),
                         "time_ratio_naive_over_chunked": round((slow["forward_s"] + slow["backward_s"])
                                                                / max(fast["forward_s"] + fast["backward_s"], 1e-9), 2),
                         "max_abs_diff_logprobs": float((lp_a - lp_b).abs().max()),
                         "max_abs_diff_grad_hidden": float((gh_a - gh_b).abs().max()),
                         "max_abs_diff_grad_weight": float((gw_a - gw_b).abs().max())})
    del lp_a, gh_a, gw_a, lp_b, gh_b, gw_b
    results = []
    for tokens in shape("logprobs_tokens", tiny):
        try:
            result, _ = measure(tokens, chunked)
        except Exception as e:  # an OOM at 128K is a finding, not a crash
            if not is_oom(e):
                raise
            result = {"tokens": tokens, "error": f"OOM: {str(e)[:300]}"}
        results.append(result)
        rec.put("chunked", results)


# ------------------------------------------------------------------------------------------------
# Section: packed attention paths on one bf16 row


def packed_row(lengths: list[int], response: int, vocab: int, seed: int):
    """Single-response Groups (prompt, response of `response` tokens) and their packed micro-batch (one
    `prompt + response` sequence each)."""
    import torch

    from golong.trainer.batch import Group, pack_groups

    g = torch.Generator().manual_seed(seed)
    samples = []
    for total in lengths:
        r = min(response, total - 1)
        ids = torch.randint(0, vocab, (total,), generator=g).numpy()
        samples.append(Group(prompt_ids=ids[: total - r], response_ids=[ids[total - r:]], advantages=1.0))
    return samples, pack_groups(samples)


def section_attention(rec: Recorder, tiny: bool) -> None:
    import importlib

    import numpy as np
    import torch
    from transformers import Qwen3ForCausalLM

    from golong.trainer import attention as attn
    from golong.trainer.attention import packed_attention_kwargs
    from golong.trainer.logprobs import token_logprobs

    dev = device(tiny)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    layers = shape("attention_layers", tiny)
    torch.manual_seed(0)
    config = qwen3_config(tiny, layers=layers, attn_implementation=attn.PER_SEQUENCE)
    with torch.device(dev):
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    samples, mb = packed_row(shape("attention_lengths", tiny), shape("attention_response", tiny),
                             config.vocab_size, seed=0)
    mb = mb.to(dev)
    rec.put("setup", {"device": str(dev), "dtype": str(dtype), "layers": layers, "row_tokens": mb.num_tokens,
                      "sequences": len(samples), "response_tokens": int(mb.labels.numel())})
    head = model.get_output_embeddings().weight

    def set_attention(name: str) -> None:
        model.config._attn_implementation = name  # read by every attention layer at call time
        for module in model.modules():
            if hasattr(module, "config") and module.config is not model.config:
                module.config._attn_implementation = name

    @torch.no_grad()
    def row_logprobs(batch, name: str):
        """Response log-probs of a packed row under attention `name`, and the seconds they took."""
        set_attention(name)
        kwargs = packed_attention_kwargs(batch.cu_seqlens, batch.max_seqlen, batch.cu_segments)
        if name == attn.FLEX_PROMPT_ONCE:
            kwargs["segment_block_mask"] = attn.prompt_once_block_mask(batch.cu_seqlens, batch.cu_segments,
                                                                        batch.num_tokens)
        sync(dev)
        start = time.perf_counter()
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                             **kwargs).last_hidden_state
        logp = token_logprobs(hidden[0, batch.logit_positions], head, batch.labels)
        sync(dev)
        return logp.float(), time.perf_counter() - start

    @torch.no_grad()
    def one_by_one():
        """Each sequence alone through transformers' SDPA attention: the reference without packing."""
        set_attention("sdpa")
        sync(dev)
        start = time.perf_counter()
        out = []
        for s in samples:
            ids = torch.from_numpy(np.concatenate([s.prompt_ids, s.response_ids[0]]).astype(np.int64))[None].to(dev)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            positions = torch.arange(len(s.response_ids[0]), device=dev) + len(s.prompt_ids) - 1
            out.append(token_logprobs(hidden[positions], head, ids[0, positions + 1]))
        sync(dev)
        return torch.cat(out).float(), time.perf_counter() - start

    row_logprobs(mb, attn.PER_SEQUENCE)  # warm-up (kernels, allocator)
    reference, reference_s = one_by_one()
    per_seq, per_seq_s = row_logprobs(mb, attn.PER_SEQUENCE)
    rec.put("separate_sdpa", {"seconds": round(reference_s, 4)})
    rec.put("per_sequence_packed", {"seconds": round(per_seq_s, 4),
                                    "max_abs_diff_vs_separate": float((per_seq - reference).abs().max()),
                                    "mean_abs_diff_vs_separate": float((per_seq - reference).abs().mean())})
    if dev.type == "cuda" and cuda_attention_choice() == "torch_varlen":
        row_logprobs(mb, attn.TORCH_VARLEN)  # warm-up
        varlen, varlen_s = row_logprobs(mb, attn.TORCH_VARLEN)
        rec.put("torch_varlen_packed", {"seconds": round(varlen_s, 4),
                                        "max_abs_diff_vs_per_sequence": float((varlen - per_seq).abs().max()),
                                        "mean_abs_diff_vs_per_sequence": float((varlen - per_seq).abs().mean()),
                                        "max_abs_diff_vs_separate": float((varlen - reference).abs().max()),
                                        "speedup_vs_per_sequence": round(per_seq_s / max(varlen_s, 1e-9), 2)})
    else:
        rec.put("torch_varlen_packed", {"skipped": f"needs CUDA and torch.nn.attention.varlen (device {dev}, "
                                                   f"choice {cuda_attention_choice() if dev.type == 'cuda' else 'n/a'})"})
    # Prompt-once groups: one prompt and its G responses in one unit, each response attending to the prompt
    # and to itself. CUDA: golong's flex_attention block mask (attention.FLEX_PROMPT_ONCE); --tiny on CPU:
    # the exact SDPA path (PER_SEQUENCE). Compared with each prompt + response run alone (error), and
    # timed against the replicated packing that runs the prompt once per response.
    from golong.trainer.batch import pack_groups

    prompt_len, group, response = shape("prompt_once_group", tiny)
    grouped = group_samples(prompt_len, group, response, config.vocab_size, seed=3)
    unit, replicated = pack_groups([grouped]).to(dev), pack_groups(grouped.split()).to(dev)
    once_name = attn.FLEX_PROMPT_ONCE if dev.type == "cuda" else attn.PER_SEQUENCE

    try:
        row_logprobs(unit, once_name)  # warm-up (flex compiles its kernel)
        once, once_s = row_logprobs(unit, once_name)
        replicated_name = attn.TORCH_VARLEN if dev.type == "cuda" and cuda_attention_choice() == "torch_varlen" \
            else attn.PER_SEQUENCE
        row_logprobs(replicated, replicated_name)
        rep, rep_s = row_logprobs(replicated, replicated_name)
        rec.put("prompt_once", {
            "attention": once_name, "prompt_tokens": prompt_len, "responses": group, "response_tokens": response,
            "row_tokens": unit.num_tokens, "replicated_row_tokens": replicated.num_tokens,
            "seconds": round(once_s, 4), "replicated_seconds": round(rep_s, 4), "replicated_attention": replicated_name,
            "speedup_vs_replicated": round(rep_s / max(once_s, 1e-9), 2),
            "max_abs_diff_vs_replicated": float((once - rep).abs().max()),
            "mean_abs_diff_vs_replicated": float((once - rep).abs().mean())})
    except Exception as e:  # recorded, so the other figures of this section still come back
        if not is_oom(e):
            rec.put("prompt_once", {"error": f"{type(e).__name__}: {str(e)[:500]}"})
        else:
            rec.put("prompt_once", {"error": f"OOM: {str(e)[:300]}"})


# ------------------------------------------------------------------------------------------------
# Section: gradients of prompt-once units (the flex block mask's backward on CUDA)


def section_prompt_once_grad(rec: Recorder, tiny: bool) -> None:
    import torch
    from transformers import Qwen3ForCausalLM

    from golong.trainer import attention as attn
    from golong.trainer.attention import packed_attention_kwargs
    from golong.trainer.batch import pack_groups
    from golong.trainer.logprobs import token_logprobs

    dev = device(tiny)
    torch.manual_seed(0)
    config = qwen3_config(tiny, layers=2, attn_implementation=attn.PER_SEQUENCE)
    config.vocab_size = shape("grad_vocab", tiny)
    with torch.device(dev):
        model = Qwen3ForCausalLM(config).float().eval()  # eval: no dropout; gradients still flow
    prompt_len, group, response = shape("grad_group", tiny)
    grouped = group_samples(prompt_len, group, response, config.vocab_size, seed=5)
    g = torch.Generator().manual_seed(5)
    unit, replicated = pack_groups([grouped]).to(dev), pack_groups(grouped.split()).to(dev)
    weights = torch.randn(unit.labels.numel(), generator=g).to(dev)  # a fixed per-token loss weight
    once_name = attn.FLEX_PROMPT_ONCE if dev.type == "cuda" else attn.PER_SEQUENCE
    rec.put("setup", {"device": str(dev), "dtype": "float32", "layers": 2, "vocab": config.vocab_size,
                      "prompt_tokens": prompt_len, "responses": group, "response_tokens": response,
                      "unit_attention": once_name, "reference_attention": attn.PER_SEQUENCE + " (replicated rows)"})

    def run(batch, name: str):
        model.config._attn_implementation = name
        model.zero_grad(set_to_none=True)
        kwargs = packed_attention_kwargs(batch.cu_seqlens, batch.max_seqlen, batch.cu_segments)
        sync(dev)
        start = time.perf_counter()
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                             **kwargs).last_hidden_state
        logp = token_logprobs(hidden[0, batch.logit_positions], model.get_output_embeddings().weight, batch.labels)
        (logp * weights).sum().backward()
        sync(dev)
        seconds = time.perf_counter() - start
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return logp.detach(), grads, seconds

    run(unit, once_name)  # warm-up: compiles flex's forward and backward kernels on CUDA
    lp_once, g_once, once_s = run(unit, once_name)
    lp_ref, g_ref, ref_s = run(replicated, attn.PER_SEQUENCE)
    assert set(g_once) == set(g_ref), "the two paths must train the same parameters"
    rel = {n: float((g_once[n] - g_ref[n]).abs().max() / g_ref[n].abs().max().clamp_min(1e-30)) for n in g_ref}
    worst = max(rel, key=rel.get)
    rec.put("result", {"max_abs_diff_logprobs": float((lp_once - lp_ref).abs().max()),
                       "max_rel_grad_diff": rel[worst], "worst_parameter": worst, "parameters_compared": len(rel),
                       "unit_row_tokens": unit.num_tokens, "replicated_row_tokens": replicated.num_tokens,
                       "unit_seconds": round(once_s, 4), "replicated_seconds": round(ref_s, 4)})


# ------------------------------------------------------------------------------------------------
# Sections through golong's PolicyEngine (DeepSpeed ZeRO-3)


def prepare_model(out_dir: str, tiny: bool) -> str:
    """A random-init Qwen3-4B-shaped (or tiny) model folder that from_pretrained loads, and a tokenizer-free
    config. Written once per run to a temp folder outside the repository."""
    import torch
    from transformers import Qwen3ForCausalLM

    dev = device(tiny)
    folder = os.path.join(out_dir, "model")
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.set_default_dtype(dtype)  # built directly in bf16: no 16 GB fp32 copy of the 4B model first
    with torch.device(dev):
        model = Qwen3ForCausalLM(qwen3_config(tiny))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    return folder


def policy_engine(model_dir: str, tiny: bool, checkpointing: bool = True, share_prompt: bool = False):
    """golong's PolicyEngine on the model folder. share_prompt=False: one response per packed sequence, the varlen
    kernel's layout. share_prompt=True: golong's default, prompt-once units (CUDA: attention auto -> flex)."""
    from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
    from golong.trainer.engine import PolicyEngine

    if tiny:
        attention = "per_sequence"
    else:
        attention = "flex" if share_prompt else cuda_attention_choice()
    model_cfg = ModelConfig(path=model_dir, dtype="float32" if tiny else "bfloat16", attention=attention,
                            gradient_checkpointing=checkpointing)
    trainer_cfg = TrainerConfig(lr=1e-6, warmup_steps=0, weight_decay=0.1, share_prompt=share_prompt)
    return PolicyEngine(model_cfg, trainer_cfg, PolicyLossConfig(), IcePopConfig(mode="off"), 1.0), attention


def samples_for(total_tokens: int, sequences: int, vocab: int, seed: int, response: int | None = None):
    """`sequences` prompt+response samples (single-response Groups) of `total_tokens` tokens together (a
    quarter of each is response)."""
    import torch

    from golong.trainer.batch import Group

    g = torch.Generator().manual_seed(seed)
    each = total_tokens // sequences
    lengths = [each] * (sequences - 1) + [total_tokens - each * (sequences - 1)]
    out = []
    for n in lengths:
        r = min(response or max(n // 4, 1), n - 1)
        ids = torch.randint(0, vocab, (n,), generator=g).numpy()
        out.append(Group(prompt_ids=ids[: n - r], response_ids=[ids[n - r:]],
                         advantages=float(torch.randn(1, generator=g)), rollout_logprobs=None))
    return out


def train_once(engine, groups, units: bool = False) -> dict:
    """One optimizer step on one packed micro-batch of `groups`; wall time measured around forward/backward +
    step. units=True packs each group as one prompt-once unit, else one prompt+response sequence per response."""
    from golong.trainer.batch import pack_groups
    from golong.trainer.loss import LossDenominator

    mb = pack_groups(groups if units else [one for g in groups for one in g.split()])
    denom = LossDenominator.build(groups, "token-mean", world=engine.world)
    sync(engine.device)
    start = time.perf_counter()
    stats = engine.forward_backward(mb, denom)
    step = engine.optimizer_step()
    sync(engine.device)
    seconds = time.perf_counter() - start
    return {"tokens": mb.num_tokens, "seconds": round(seconds, 4), "tokens_per_s": round(mb.num_tokens / seconds, 1),
            "engine_tokens_per_s": round(step.tokens_per_s, 1), "peak_memory_gib": round(step.peak_memory_gib, 3),
            "grad_norm": float(step.grad_norm), "loss": float(stats.loss)}


def group_samples(prompt_tokens: int, responses: int, response_tokens: int, vocab: int, seed: int):
    """One prompt and its `responses` responses: one Group."""
    import torch

    from golong.trainer.batch import Group

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (prompt_tokens,), generator=g).numpy()
    advantages, response_ids = [], []
    for _ in range(responses):  # the draws in the order the per-response version made them
        advantages.append(float(torch.randn(1, generator=g)))
        response_ids.append(torch.randint(0, vocab, (response_tokens,), generator=g).numpy())
    return Group(prompt_ids=prompt, response_ids=response_ids, advantages=advantages, group_id=0)


def parameter_count(module) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())


def section_train_step(rec: Recorder, tiny: bool, model_dir: str) -> None:
    """golong's default training path on CUDA: trainer.share_prompt on, attention auto -> flex (prompt-once
    block mask), ZeRO-3, gradient checkpointing."""
    engine, attention = policy_engine(model_dir, tiny, share_prompt=True)
    n_params = parameter_count(engine.module)
    vocab = engine.module.config.vocab_size
    rec.put("setup", {"device": str(engine.device), "attention": attention, "share_prompt": True,
                      "parameters": n_params, "zero_stage": 3, "gradient_checkpointing": True,
                      "peak_flops": PEAK_BF16_FLOPS, "mfu_formula": "6 * parameters * tokens / seconds / 989e12"})
    sequences = shape("train_sequences", tiny)
    # Warm-up, one step per size: flex's compiled kernels are built on the first call and, torch.compile's way,
    # rebuilt for dynamic shapes at the second size (on the H200 the first 32K step took 11.2 s against
    # 3.2 s at 16K, most likely that rebuild: not profiled).
    warm = [train_once(engine, samples_for(tokens, sequences, vocab, seed=99 + i))
            for i, tokens in enumerate(shape("train_tokens", tiny))]
    rec.put("warmup_steps", warm)
    results = []
    for i, tokens in enumerate(shape("train_tokens", tiny)):
        try:
            result = train_once(engine, samples_for(tokens, sequences, vocab, seed=i))
            result["mfu"] = 6 * n_params * result["tokens"] / result["seconds"] / PEAK_BF16_FLOPS
        except Exception as e:
            if not is_oom(e):
                raise
            result = {"tokens": tokens, "error": f"OOM: {str(e)[:300]}"}
        results.append(result)
        rec.put("steps", results)
    # One group (a long prompt, G responses): the prompt once in one unit vs once per response.
    prompt_tokens, responses, response_tokens = shape("train_group", tiny)
    group = group_samples(prompt_tokens, responses, response_tokens, vocab, seed=7)
    once = train_once(engine, [group], units=True)
    replicated = train_once(engine, [group], units=False)
    rec.put("prompt_once_step", {"prompt_tokens": prompt_tokens, "responses": responses,
                                 "response_tokens": response_tokens, "once": once, "replicated": replicated,
                                 "tokens_ratio": round(replicated["tokens"] / once["tokens"], 2),
                                 "time_ratio_replicated_over_once": round(replicated["seconds"] / once["seconds"], 2)})
    engine.close()


def section_long_seq(rec: Recorder, tiny: bool, model_dir: str) -> None:
    import torch

    engine, attention = policy_engine(model_dir, tiny, checkpointing=True)
    vocab = engine.module.config.vocab_size
    response = shape("long_response", tiny)
    rec.put("setup", {"device": str(engine.device), "attention": attention, "response_tokens": response,
                      "parameters": parameter_count(engine.module), "zero_stage": 3, "gradient_checkpointing": True})
    results = []
    for tokens in shape("long_lengths", tiny):
        try:
            result = train_once(engine, samples_for(tokens, 1, vocab, seed=tokens, response=response))
            result["fits"] = True
        except Exception as e:
            if not is_oom(e):
                raise
            peak_gib = gib(torch.cuda.max_memory_allocated(engine.device)) if engine.device.type == "cuda" else None
            result = {"tokens": tokens, "fits": False, "peak_memory_gib": peak_gib, "error": f"OOM: {str(e)[:300]}"}
        results.append(result)
        rec.put("lengths", results)
        if not result["fits"]:
            break  # the engine may hold half-gathered parameters after an OOM: stop here
    fitting = [r["tokens"] for r in results if r.get("fits")]
    rec.put("longest_trained_tokens", max(fitting) if fitting else 0)
    if results and results[-1].get("fits"):
        rec.put("note", "every length tried fits; the limit is above the longest")
    engine.close()


# ------------------------------------------------------------------------------------------------
# Orchestration


def versions() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "deepspeed", "triton", "flash_attn", "vllm"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as e:  # absent, or fails to import: both are facts about the machine
            info[name] = f"absent ({type(e).__name__})"
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
            info["device_memory_gib"] = gib(torch.cuda.get_device_properties(0).total_memory)
        else:
            info["device"] = "cpu"
    except Exception as e:
        info["device"] = f"unknown ({e})"
    return info


def run_child(args) -> int:
    rec = Recorder(args.out, args.section)
    start = time.perf_counter()
    try:
        if args.section == "logprobs":
            section_logprobs(rec, args.tiny)
        elif args.section == "attention":
            section_attention(rec, args.tiny)
        elif args.section == "prompt_once_grad":
            section_prompt_once_grad(rec, args.tiny)
        elif args.section == "prepare_model":
            rec.put("model_dir", prepare_model(args.work, args.tiny))
        elif args.section == "train_step":
            section_train_step(rec, args.tiny, args.model_dir)
        elif args.section == "long_seq":
            section_long_seq(rec, args.tiny, args.model_dir)
        else:
            raise ValueError(f"unknown section {args.section!r}")
    except BaseException as e:
        rec.put("error", f"{type(e).__name__}: {e}")
        rec.put("traceback", traceback.format_exc()[-4000:])
        return 1
    finally:
        rec.put("seconds", round(time.perf_counter() - start, 2))
    return 0


def child_env(tiny: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # each section is its own world of one
    if tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    return env


def run_section(name: str, args, work: str, model_dir: str | None, budget: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--section", name, "--out", args.out, "--work", work]
    if args.tiny:
        command.append("--tiny")
    if model_dir:
        command += ["--model-dir", model_dir]
    start = time.perf_counter()
    status: dict = {"budget_s": round(budget, 1)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(budget, 1), env=child_env(args.tiny),
                              cwd=REPO)
        status.update(returncode=proc.returncode, timed_out=False, log_tail=(proc.stdout + proc.stderr)[-2000:])
    except subprocess.TimeoutExpired as e:
        parts = [p.decode(errors="replace") if isinstance(p, bytes) else (p or "") for p in (e.stdout, e.stderr)]
        status.update(returncode=None, timed_out=True, log_tail="".join(parts)[-2000:])
    status["wall_s"] = round(time.perf_counter() - start, 2)
    path = os.path.join(args.out, f"section_{name}.json")
    figures = json.load(open(path)) if os.path.exists(path) else {}
    return {"status": status, **figures}


def summary_text(report: dict) -> str:
    lines = [f"golong GPU proof ({'tiny, CPU' if report['tiny'] else 'full shapes'}), {report['finished']}",
             "versions: " + ", ".join(f"{k}={v}" for k, v in report["versions"].items()), ""]
    for name in SECTIONS:
        section = report["sections"].get(name)
        if section is None:
            lines.append(f"[{name}] not run")
            continue
        status = section["status"]
        state = "timed out" if status.get("timed_out") else ("ok" if status.get("returncode") == 0 else "FAILED")
        lines.append(f"[{name}] {state} in {status.get('wall_s')} s (budget {status.get('budget_s')} s)")
        for key, value in section.items():
            if key not in ("status", "traceback"):
                lines.append(f"  {key}: {json.dumps(value, default=str)}")
        if state != "ok" and section.get("traceback"):
            lines.append("  traceback: " + section["traceback"].strip().splitlines()[-1])
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
    with open(os.path.join(out, "gpu_proof.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(out, "gpu_proof.txt"), "w") as f:
        f.write(summary_text(report))


def run_all(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="golong_gpu_proof_")  # the 8 GB model stays out of $OUT
    deadline = time.perf_counter() + args.budget
    report = {"tiny": args.tiny, "versions": versions(), "sections": {}, "finished": "running",
              "budget_s": args.budget}
    write_report(report, args.out)
    wanted = [s for s in SECTIONS if s in args.sections]
    model_dir = None
    for name in wanted:
        if name in ("train_step", "long_seq") and model_dir is None:
            box = args.time_boxes.get("prepare_model", BUDGET_S["prepare_model"] * args.budget_scale)
            prep = run_section("prepare_model", args, work, None, min(box, deadline - time.perf_counter()))
            report["sections"]["prepare_model"] = prep
            model_dir = prep.get("model_dir")
            if not model_dir:
                for skipped in ("train_step", "long_seq"):
                    report["sections"][skipped] = {"status": {"skipped": "no model (prepare_model failed)"}}
                write_report(report, args.out)
                continue
        if name in report["sections"]:
            continue
        left = deadline - time.perf_counter()
        if left < 10:
            report["sections"][name] = {"status": {"skipped": "out of time"}}
            continue
        box = args.time_boxes.get(name, BUDGET_S[name] * args.budget_scale)
        report["sections"][name] = run_section(name, args, work, model_dir, min(box, left))
        write_report(report, args.out)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_report(report, args.out)
    print(summary_text(report), end="")
    ok = all(s.get("status", {}).get("returncode") == 0 for s in report["sections"].values())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_proof_out"), help="result folder (default $OUT)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (tests)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--budget", type=float, default=555.0, help="seconds for the whole run (default 555)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time box")
    parser.add_argument("--time-box", action="append", default=[], metavar="SECTION=SECONDS",
                        help="override one section's time box, e.g. long_seq=200")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    args.time_boxes = {}
    for item in args.time_box:
        name, _, seconds = item.partition("=")
        if name not in BUDGET_S or not seconds:
            parser.error(f"--time-box {item!r}: expected SECTION=SECONDS with SECTION one of {list(BUDGET_S)}")
        args.time_boxes[name] = float(seconds)
    if args.section:
        return run_child(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
