"""flex_attention's prompt-once BlockMask: build time and peak memory of torch's `create_block_mask`
(the old path: it evaluates the mask_mod on all T x T pairs before reducing them to 128 x 128 tiles)
against `prompt_once_block_mask` (tiles from the unit/segment boundaries), per packed-row length.

Row layout, as the recipes pack it: units of one prompt (1/16 of the row, at most 8,192 tokens) and
G = 16 responses of random lengths (0.5x-1.5x their mean, not multiples of 128), units back to back
until the row is full. Each measurement runs in a fresh child process, after one warm-up build of a
300-token row: peak memory is the child's peak resident set (Linux VmHWM, reset through
/proc/self/clear_refs just before) minus what was resident before the build: torch's CPU allocations
included.
The memory ratio floors the new path's peak at 0.1 MiB (below that its growth is lost in pages
the process already holds). The old path runs only up to --old-max tokens (it holds ~10 bytes per pair: ~160 GiB at 131K).
Both paths' tile sets are compared where both run.

    PYTHONPATH=. .venv/bin/python bench/block_mask.py          # --tokens 4096 8192 16384 131072 360448
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys

PEAK_CHILD = r"""
import hashlib, json, sys, time
import torch
from golong.trainer.attention import prompt_once_block_mask, prompt_once_mask_mod, segment_ids
from torch.nn.attention.flex_attention import create_block_mask

mode, cu, segs = sys.argv[1], *(torch.tensor(json.loads(a), dtype=torch.int32) for a in sys.argv[2:4])


def build(cu, segs):
    T = int(cu[-1])
    if mode == "old":
        return create_block_mask(prompt_once_mask_mod(*segment_ids(cu, segs, T)), None, None, T, T, device="cpu")
    return prompt_once_block_mask(cu, segs, T)


build(torch.tensor([0, 300], dtype=torch.int32), torch.tensor([0, 100, 300], dtype=torch.int32))  # warm-up


def status_kib(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])


open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to what is resident now
before = status_kib("VmRSS")
start = time.perf_counter()
mask = build(cu, segs)
seconds = time.perf_counter() - start
peak_kib = status_kib("VmHWM") - before
tiles = [mask.kv_num_blocks.sum().item(), mask.full_kv_num_blocks.sum().item()]
digest = hashlib.sha256(mask.kv_indices.numpy().tobytes() + mask.full_kv_indices.numpy().tobytes()).hexdigest()
print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024, "tiles": tiles, "digest": digest}))
"""


def row_layout(num_tokens: int, group: int = 16, seed: int = 0) -> tuple[list[int], list[int]]:
    """(cu_seqlens, cu_segments) of one packed row of exactly `num_tokens` tokens."""
    rng = random.Random(seed)
    prompt = min(8192, num_tokens // 16)
    mean_response = (num_tokens // 4 - prompt) // group  # a unit is about a quarter of the row
    cu, segs = [0], [0]
    while cu[-1] < num_tokens:
        segs.append(min(num_tokens, segs[-1] + prompt))
        for _ in range(group):
            if segs[-1] < num_tokens:
                segs.append(min(num_tokens, segs[-1] + rng.randint(mean_response // 2, 3 * mean_response // 2)))
        cu.append(segs[-1])
    return cu, segs


def measure(mode: str, cu: list[int], segs: list[int]) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK_CHILD, mode, json.dumps(cu), json.dumps(segs)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 131072, 360448])
    parser.add_argument("--old-max", type=int, default=16384, help="longest row the dense old path builds")
    args = parser.parse_args()
    print(f"{'row tokens':>10}{'units':>7}{'tiles partial/full':>20}{'old s':>9}{'old MiB':>10}"
          f"{'new s':>9}{'new MiB':>10}{'time ratio':>12}{'memory ratio':>14}")
    for tokens in args.tokens:
        cu, segs = row_layout(tokens)
        new = measure("new", cu, segs)
        old = measure("old", cu, segs) if tokens <= args.old_max else None
        if old is not None and (old["tiles"], old["digest"]) != (new["tiles"], new["digest"]):
            raise SystemExit(f"{tokens} tokens: the two paths give different tile sets")
        cells = (f"{old['seconds']:>9.3f}{old['peak_mib']:>10.1f}" if old else f"{'-':>9}{'-':>10}")
        ratios = (f"{old['seconds'] / new['seconds']:>11.1f}x{old['peak_mib'] / max(new['peak_mib'], 0.1):>13.0f}x"
                  if old else f"{'-':>12}{'-':>14}")
        print(f"{tokens:>10}{len(cu) - 1:>7}{'{}/{}'.format(*new['tiles']):>20}{cells}"
              f"{new['seconds']:>9.3f}{new['peak_mib']:>10.2f}{ratios}")


if __name__ == "__main__":
    main()
