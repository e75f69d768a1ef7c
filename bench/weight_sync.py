"""Weight sync trainer -> vLLM: time and peak extra memory against model size and bucket size.

Each model size runs under torchrun (2 CPU ranks; vLLM allows one engine per process), twice:
once for time, once for memory. Each rank holds a DeepSpeed ZeRO-3 engine with a random
Qwen3-shaped float32 model and a colocated vLLM engine (external_launcher, bf16, eager). The table
gives, per rank, the median time of `--repeats` syncs per bucket size and two memory figures:

- counted: SyncStats.peak_extra_bytes on CPU (largest bucket's gathered shards of the other rank
  plus its bf16 copies);
- measured: growth of the process's peak resident memory during one sync (VmHWM, reset through
  /proc/self/clear_refs), in a second run where glibc serves large blocks by mmap so that freed
  memory leaves the resident set. Includes what `counted` leaves out: vLLM's staging copy of the
  layer it is loading.

The baseline is the largest bucket size, where every decoder layer sits in one bucket (almost the
whole model gathered at once, as a naive sync would): `vs base` is each row's measured peak over it.

    python bench/weight_sync.py                       # all sizes, buckets 1 32 128 4096 MB
    python bench/weight_sync.py --sizes s m --buckets 1 64
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name: (hidden, layers, heads, kv heads, intermediate); head_dim 64 as vLLM's CPU kernels need
SIZES = {
    "s": (256, 4, 4, 2, 768),
    "m": (512, 8, 8, 4, 1536),
    "l": (1024, 8, 16, 8, 3072),
}


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def worker(size: str, buckets_mb: list[int], repeats: int, measure: str, out: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from golong.rollout import RolloutConfig, RolloutEngine
    from golong.tiny_model import TinyModelSpec, build_tiny_model

    deepspeed.init_distributed(dist_backend="gloo")
    hidden, layers, heads, kv_heads, inter = SIZES[size]
    spec = TinyModelSpec(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                         intermediate_size=inter)
    model_dir = os.path.join(tempfile.gettempdir(), f"golong_bench_sync_{size}")
    if dist.get_rank() == 0:
        build_tiny_model(model_dir, spec=spec)
    dist.barrier()

    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                 "steps_per_print": 10**9}
    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841 - alive during from_pretrained: ZeRO-3 partitions it
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer, _, _, _ = deepspeed.initialize(model=model, config=ds_config)
    num_params = sum(p.ds_numel for p in trainer.module.parameters())

    cfg = RolloutConfig(n=1, max_response_length=16, gpu_memory_utilization=0.3, enforce_eager=True)
    engine = RolloutEngine(cfg, model_dir, max_model_len=128)
    engine.generate([[5, 6, 7]], max_tokens=4)  # warm the engine up once
    engine.sync_weights(trainer.module)  # the first sync pays one-time costs (vLLM's reload bookkeeping)

    def sync(bucket_mb):
        engine.cfg.sync_bucket_mb = bucket_mb
        dist.barrier()
        return engine.sync_weights(trainer.module)

    rows = []
    for bucket_mb in buckets_mb:
        if measure == "time":
            stats = [sync(bucket_mb) for _ in range(repeats)]
            rows.append({"seconds": statistics.median(s.seconds for s in stats), "buckets": stats[0].num_buckets,
                         "counted": stats[0].peak_extra_bytes, "params": num_params})
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident size to the current one
            before = rss_kib("VmRSS")
            sync(bucket_mb)
            rows.append({"measured": (rss_kib("VmHWM") - before) * 1024})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    engine.close()  # last: vLLM's shutdown destroys the process group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--buckets", nargs="+", type=int, default=[1, 32, 128, 4096], help="sync_bucket_mb values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # size, when run under torchrun
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.buckets, args.repeats, args.measure, args.out)
        return

    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # glibc keeps freed blocks resident and reuses them, so the resident peak would miss (or,
    # fragmented, overstate) what a sync holds; with every block >= 64 KiB an mmap, unmapped on
    # free, it tracks live tensors. Page faults then slow allocation: time is measured without it.
    env_of = {"time": env, "memory": {**env, "MALLOC_MMAP_THRESHOLD_": "65536"}}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for measure in ("time", "memory"):
                out = os.path.join(tmp, f"{size}.{measure}.json")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", __file__,
                       "--worker", size, "--measure", measure, "--out", out, "--repeats", str(args.repeats),
                       "--buckets", *map(str, args.buckets)]
                proc = subprocess.run(cmd, env=env_of[measure], cwd=REPO, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"size {size} ({measure}) failed:\n{proc.stderr[-4000:]}")
                with open(out) as f:
                    for bucket_mb, row in zip(args.buckets, json.load(f)):
                        rows.setdefault((size, bucket_mb), {}).update(row)

    mb = 2**20
    print("Weight sync, 2 CPU ranks, ZeRO-3 float32 trainer -> vLLM bf16; per rank; base = largest bucket")
    print(f"{'size':>4} {'params':>8} {'fp32 MB':>8} {'bucket':>7} {'buckets':>7} {'sync s':>7} {'MB/s':>7} "
          f"{'counted MB':>10} {'measured MB':>11} {'vs base':>7}")
    for size in args.sizes:
        base = rows[size, max(args.buckets)]["measured"]
        for bucket_mb in args.buckets:
            r = rows[size, bucket_mb]
            model_mb = r["params"] * 4 / mb
            print(f"{size:>4} {r['params'] / 1e6:>7.1f}M {model_mb:>8.1f} {bucket_mb:>5}MB {r['buckets']:>7} "
                  f"{r['seconds']:>7.3f} {model_mb / r['seconds']:>7.0f} {r['counted'] / mb:>10.1f} "
                  f"{r['measured'] / mb:>11.1f} {r['measured'] / base:>7.2f}")


if __name__ == "__main__":
    main()
