"""Peak memory per rank of one training step on one long row: sequence parallelism 1 vs 2 (CPU, gloo).

A tiny Qwen3 with a wide hidden size (so activations, not the vocabulary, dominate) trains one packed
row of --tokens tokens (one prompt + a 512-token response) with ZeRO-3, gradient checkpointing on, as
`golong train` does: sp = 1 on one rank, then sp = 2 on two ranks (an SP group of two holding half
the row each). Each rank runs one warm-up step (AdamW allocates its state), resets its peak RSS
(/proc/self/clear_refs), and reports the peak resident memory of a second step above its RSS before
that step: the step's activations, gathered parameters and buffers.

    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --tokens 8192,16384
"""
from __future__ import annotations

import argparse
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
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = rss_gib("VmRSS")
    start = time.perf_counter()
    engine.forward_backward(mb, denom)
    engine.optimizer_step()
    seconds = time.perf_counter() - start
    result = {"rank": engine.sp.rank + engine.sp.size * engine.sp.dp_rank, "sp": sp, "tokens": tokens,
              "step_extra_gib": rss_gib("VmHWM") - before, "rss_before_gib": before, "seconds": seconds}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="8192", help="comma-separated row lengths")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    from golong.tiny_model import TinyModelSpec, build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyModelSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 128,
                             num_kv_heads=2, head_dim=128, intermediate_size=args.hidden * 11 // 4,
                             max_position_embeddings=1 << 20)
        model_dir = build_tiny_model(os.path.join(tmp, "model"), spec=spec)
        print(f"model: hidden {args.hidden}, {args.layers} layers, {spec.num_heads} heads / 2 KV heads, "
              f"intermediate {spec.intermediate_size}; ZeRO-3, gradient checkpointing, fp32, CPU")
        print("| row tokens | sp | tokens per rank | step peak above RSS, per rank (GiB) | ratio sp2/sp1 | step seconds |")
        print("|---|---|---|---|---|---|")
        for tokens in (int(t) for t in args.tokens.split(",")):
            base = None
            for sp in (1, 2):
                ranks = run(model_dir, tokens, sp, tmp)
                peak = max(r["step_extra_gib"] for r in ranks)
                base = base or peak
                per_rank = " / ".join(f"{r['step_extra_gib']:.2f}" for r in ranks)
                print(f"| {tokens} | {sp} | {tokens // sp} | {per_rank} "
                      f"| {peak / base:.2f} | {max(r['seconds'] for r in ranks):.1f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
