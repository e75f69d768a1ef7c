"""Memory and time of chunked `token_logprobs` against the naive [T, V] log-softmax, at growing T.

Each case runs forward + backward of sum(log-probs) in a fresh process, whose peak resident memory
over the inputs (hidden, weight) is measured from /proc (VmHWM - VmRSS before the call): the extra
memory the computation needs, including the weight's gradient (same size as the weight). The naive
path is skipped where its estimated need exceeds --naive-limit-gib: 3 x T x V x 4 bytes (logits,
log-softmax output, their gradient; what it measured where it ran).

    PYTHONPATH=. .venv/bin/python bench/logprobs.py                       # V = 151,936 (Qwen3), H = 128
    PYTHONPATH=. .venv/bin/python bench/logprobs.py --tokens 1024,16384 --hidden 2560 --device cuda
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from golong.trainer.logprobs import token_logprobs


def rss_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{field} not in /proc/self/status")


def naive_logprobs(hidden, weight, labels):
    return torch.log_softmax((hidden @ weight.T).float(), dim=-1).gather(1, labels[:, None])[:, 0]


def run_case(method: str, tokens: int, vocab: int, hidden_size: int, chunk: int, device: str) -> dict:
    """One forward + backward in this process; returns seconds and extra peak memory in GiB."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=g).to(device).requires_grad_()
    weight = (0.02 * torch.randn(vocab, hidden_size, generator=g)).to(device).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**30
    else:
        before = rss_gib("VmRSS")
    start = time.perf_counter()
    if method == "chunked":
        logp = token_logprobs(hidden, weight, labels, chunk_size=chunk)
    else:
        logp = naive_logprobs(hidden, weight, labels)
    logp.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else rss_gib("VmHWM")
    return {"seconds": seconds, "extra_gib": peak - before}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1024,2048,4096,8192,16384")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-limit-gib", type=float, default=8.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: method,T run in a child process
    args = parser.parse_args()

    if args.case:
        method, tokens = args.case.split(",")
        print(json.dumps(run_case(method, int(tokens), args.vocab, args.hidden, args.chunk, args.device)))
        return

    weight_gib = args.vocab * args.hidden * 4 / 2**30
    print(f"V={args.vocab} H={args.hidden} chunk={args.chunk} fp32 on {args.device}; "
          f"weight (and its gradient) {weight_gib:.2f} GiB each; extra = peak memory over the inputs")
    print(f"{'T':>7} {'chunked s':>10} {'chunked GiB':>12} {'naive s':>9} {'naive GiB':>10} {'memory ratio':>13}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        results = {}
        naive_estimate = 3 * tokens * args.vocab * 4 / 2**30
        for method in ("chunked", "naive"):
            if method == "naive" and naive_estimate > args.naive_limit_gib:
                results[method] = None
                continue
            cmd = [sys.executable, __file__, "--case", f"{method},{tokens}", "--vocab", str(args.vocab),
                   "--hidden", str(args.hidden), "--chunk", str(args.chunk), "--device", args.device]
            results[method] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        chunked, naive = results["chunked"], results["naive"]
        naive_cols = (f"{naive['seconds']:9.2f} {naive['extra_gib']:10.2f} {naive['extra_gib'] / chunked['extra_gib']:12.1f}x"
                      if naive else f"{'skipped':>9} {'~' + format(naive_estimate, '.1f'):>10} {'':>13}")
        print(f"{tokens:7d} {chunked['seconds']:10.2f} {chunked['extra_gib']:12.2f} {naive_cols}", flush=True)


if __name__ == "__main__":
    main()
