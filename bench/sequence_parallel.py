"""Peak memory per rank of one training step on one long row: sequence parallelism 1 vs 2 (CPU, gloo).

A tiny Qwen3 with a wide hidden size (so activations, not the vocabulary, dominate) trains one packed
row of --tokens tokens (one prompt + a 512-token response) with ZeRO-3, gradient checkpointing on, as
`golong train` does: sp = 1 on one rank, then sp = 2 on two ranks (an SP group of two holding half
the row each). Each rank runs one warm-up step (AdamW allocates its state), resets its peak RSS
(/proc/self/clear_refs), and reports the peak resident memory of a second step above its RSS before
that step (freed heap handed back with malloc_trim first, so that RSS is what is live): the step's
activations, gathered parameters and buffers. The absolute peak RSS per rank is printed beside it.

    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --tokens 8192,16384
    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --project-only     # the 176K projection

The projection for Qwen3-4B / Qwen3-30B-A3B (`project`) is arithmetic, not a measurement: bf16,
gradient checkpointing (one hidden state per layer and token kept), flash-attn varlen (no T x T
matrix), ZeRO-3 over the GPUs, the chunked LM head.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

WORKER = "--worker"


def rss_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(model_dir: str, tokens: int, sp: int, out: str) -> None:
    import torch

    from golong.trainer.batch import TrainSample, pack
    from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
    from golong.trainer.engine import PolicyEngine
    from golong.trainer.loss import LossDenominator
    from golong.trainer.sequence_parallel import counted_once

    engine = PolicyEngine(ModelConfig(path=model_dir), TrainerConfig(sequence_parallel_size=sp, warmup_steps=0),
                          PolicyLossConfig(), IcePopConfig(mode="off"), temperature=1.0)
    g = torch.Generator().manual_seed(0)
    response = 512
    sample = TrainSample(torch.randint(0, 200, (tokens - response,), generator=g).tolist(),
                         torch.randint(0, 200, (response,), generator=g).tolist(), advantage=1.0)
    mb = pack([sample])
    denom = LossDenominator.build(counted_once([sample], engine.sp), "token-mean")
    engine.forward_backward(mb, denom)  # warm-up: AdamW's state is allocated by the first step
    engine.optimizer_step()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is what is live
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = rss_gib("VmRSS")
    start = time.perf_counter()
    engine.forward_backward(mb, denom)
    engine.optimizer_step()
    seconds = time.perf_counter() - start
    peak = rss_gib("VmHWM")
    result = {"rank": engine.sp.rank + engine.sp.size * engine.sp.dp_rank, "sp": sp, "tokens": tokens,
              "step_extra_gib": peak - before, "peak_gib": peak, "seconds": seconds}
    with open(f"{out}.{result['rank']}", "w") as f:
        json.dump(result, f)
    engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model_dir: str, tokens: int, sp: int, tmp: str) -> list[dict]:
    out = os.path.join(tmp, f"sp{sp}_{tokens}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={sp}", f"--master_port={free_port()}",
           __file__, WORKER, model_dir, str(tokens), str(sp), out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"sp={sp} tokens={tokens} failed:\n{proc.stderr[-4000:]}")
    return [json.load(open(f"{out}.{r}")) for r in range(sp)]


GIB = 2**30
# From the models' HF configs: hidden, layers, query heads, KV heads, head_dim, parameters (B), and the
# values per token one layer keeps between its forward and backward when it is recomputed:
#   attention: norm in/out, residual, q, k, v, rotated q/k, attention out, o_proj out
#              = 5 H + 3 q + 3 kv with q = heads x head_dim, kv = KV heads x head_dim
#   dense MLP: gate, up, act(gate), act(gate) * up = 4 I
#   MoE (top-k of E experts, HF's per-expert loop): router logits 2E (fp32) + k x 4 I (expert MLPs)
#              + 2 k H (tokens gathered to and returned from their experts)
MODELS = {
    "Qwen3-4B": dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, params=4.02, vocab=151936,
                     per_token=5 * 2560 + 3 * 4096 + 3 * 1024 + 4 * 9728, offload=False),
    "Qwen3-30B-A3B": dict(hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128, params=30.5, vocab=151936,
                          per_token=5 * 2048 + 3 * 4096 + 3 * 512 + 2 * 128 + 8 * 4 * 768 + 2 * 8 * 2048, offload=True),
}


def project(name: str, tokens: int, sp: int, gpus: int, chunk: int = 1024) -> dict:
    """GiB per GPU of one training step on a row of `tokens` tokens (see MODELS for the terms)."""
    m = MODELS[name]
    local = tokens / sp
    checkpoints = local * m["hidden"] * 2 * m["layers"] / GIB  # one bf16 hidden state per layer and token
    layer = 2 * local * m["per_token"] * 2 / GIB  # one layer recomputed: activations and their gradients
    q, kv = m["heads"] * m["head_dim"], max(m["kv_heads"], sp) * m["head_dim"]  # KV repeated up to sp heads
    # whole-row q, k, v, out of this rank's heads, ~3 copies each around the all-to-alls (rearranged
    # input, exchanged output, rearranged back) while one layer runs: what the CPU bench saw SP add
    ulysses = 3 * tokens * (2 * q + 2 * kv) / sp * 2 / GIB
    head = 2.5 * chunk * m["vocab"] * 4 / GIB  # chunked log-probs: ~2.5 fp32 [chunk, V] blocks
    # ZeRO-3 states per parameter: bf16 weight 2 B + fp32 gradient 4 B + fp32 master and AdamW 12 B,
    # of which only the bf16 weight and a bf16 gradient stay on the GPU with offload_optimizer
    states = m["params"] * 1e9 * (4 if m["offload"] else 18) / gpus / GIB
    gathered = 2 * m["params"] * 1e9 / m["layers"] * 2 / GIB + m["vocab"] * m["hidden"] * 2 / GIB  # 2 layers + embedding
    parts = dict(checkpoints=checkpoints, layer=layer, ulysses=ulysses if sp > 1 else 0.0, lm_head=head,
                 zero3_states=states, gathered=gathered)
    return {**parts, "total": sum(parts.values())}


def print_projection(tokens: int = 163840 + 16384) -> None:
    print(f"\nprojection (arithmetic, GiB per GPU) for one {tokens}-token row (160K prompt + 16K response):")
    print("| model | GPUs | sp | tokens per rank | checkpoints | one layer | Ulysses buffers | LM head | ZeRO-3 states "
          "| gathered params | total |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, gpus in (("Qwen3-4B", 8), ("Qwen3-30B-A3B", 8), ("Qwen3-30B-A3B", 16)):
        for sp in (1, 2, 4, 8):
            p = project(name, tokens, sp, gpus)
            print(f"| {name} | {gpus} | {sp} | {tokens // sp} | {p['checkpoints']:.1f} | {p['layer']:.1f} "
                  f"| {p['ulysses']:.1f} | {p['lm_head']:.1f} | {p['zero3_states']:.1f} | {p['gathered']:.1f} "
                  f"| {p['total']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="8192", help="comma-separated row lengths")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--project-only", action="store_true", help="print the 176K projection and stop")
    args = parser.parse_args()
    if args.project_only:
        return print_projection()
    from golong.tiny_model import TinyModelSpec, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyModelSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 128,
                             num_kv_heads=2, head_dim=128, intermediate_size=args.hidden * 11 // 4,
                             max_position_embeddings=1 << 20)
        model_dir = build_tiny_model(os.path.join(tmp, "model"), spec=spec)
        print(f"model: hidden {args.hidden}, {args.layers} layers, {spec.num_heads} heads / 2 KV heads, "
              f"intermediate {spec.intermediate_size}; ZeRO-3, gradient checkpointing, fp32, CPU")
        print("| row tokens | sp | tokens per rank | step peak above live RSS, per rank (GiB) | ratio sp2/sp1 "
              "| peak RSS, per rank (GiB) | step seconds |")
        print("|---|---|---|---|---|---|---|")
        for tokens in (int(t) for t in args.tokens.split(",")):
            base = None
            for sp in (1, 2):
                ranks = run(model_dir, tokens, sp, tmp)
                peak = max(r["step_extra_gib"] for r in ranks)
                base = base or peak
                per_rank = " / ".join(f"{r['step_extra_gib']:.2f}" for r in ranks)
                peaks = " / ".join(f"{r['peak_gib']:.2f}" for r in ranks)
                print(f"| {tokens} | {sp} | {tokens // sp} | {per_rank} "
                      f"| {peak / base:.2f} | {peaks} | {max(r['seconds'] for r in ranks):.1f} |", flush=True)
    print_projection()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
