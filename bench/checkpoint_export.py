"""Checkpoint save/load and HF export of a ZeRO-3 model on 2 CPU ranks: seconds, and the extra memory the
export needs per rank, for golong's streamed export against the plain way (gather the whole model, then
`save_pretrained`, as `stage3_gather_16bit_weights_on_model_save` does).

    PYTHONPATH=. .venv/bin/python bench/checkpoint_export.py [--layers 12 --hidden 768 --shard-mb 100]

The driver starts one torchrun per export variant (peak RSS is per process) and prints a table.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset_peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args):
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config
    from transformers.integrations import HfDeepSpeedConfig

    from golong.trainer.checkpoint import Checkpointer, RunState
    from golong.trainer.export import export_hf

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    config = Qwen3Config(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=max(1, args.hidden // 256), head_dim=64, tie_word_embeddings=False)

    def build():
        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - ZeRO-3 init inside from_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return engine

    engine = build()
    numel = sum(p.ds_numel for p in engine.module.parameters())
    ids = torch.randint(0, 32000, (1, 64))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    ckpt = Checkpointer(os.path.join(args.out, "run"), keep_last=1)
    result = {"params_M": numel / 1e6, "model_MB": numel * 4 / 2**20}

    torch.distributed.barrier()
    t = time.perf_counter()
    path = ckpt.save(engine, RunState(step=1))
    result["save_s"] = time.perf_counter() - t

    hf_dir = os.path.join(args.out, "hf")
    reset_peak()
    base = rss_mb("VmRSS")
    torch.distributed.barrier()
    t = time.perf_counter()
    if args.variant == "streamed":
        export_hf(engine.module, None, hf_dir, max_shard_size=f"{args.shard_mb}MB")
    else:  # the plain way: the whole model gathered on every rank, rank 0 saves it
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params):
            if rank == 0:
                engine.module.save_pretrained(hf_dir, max_shard_size=f"{args.shard_mb}MB")
        torch.distributed.barrier()
    result["export_s"] = time.perf_counter() - t
    result["export_extra_rss_MB"] = rss_mb("VmHWM") - base

    engine = build()
    torch.distributed.barrier()
    t = time.perf_counter()
    ckpt.load(path, engine)
    result["load_s"] = time.perf_counter() - t
    print("RESULT", rank, json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--variant", choices=["streamed", "whole"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if "RANK" in os.environ:
        return worker(args)
    rows = {}
    for variant in ("whole", "streamed"):
        out = tempfile.mkdtemp(prefix="golong-bench-ckpt-")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", __file__,
               "--variant", variant, "--out", out, "--layers", str(args.layers), "--hidden", str(args.hidden),
               "--shard-mb", str(args.shard_mb)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        shutil.rmtree(out, ignore_errors=True)
        lines = [l.split(" ", 2) for l in proc.stdout.splitlines() if l.startswith("RESULT")]
        if proc.returncode or len(lines) != 2:
            sys.exit(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        rows[variant] = {int(rank): json.loads(data) for _, rank, data in lines}
    first = rows["whole"][0]
    print(f"model: {first['params_M']:.1f}M params, {first['model_MB']:.0f} MB fp32; 2 ranks ZeRO-3; "
          f"shards of {args.shard_mb} MB")
    print(f"{'':10s} {'save s':>7s} {'load s':>7s} {'export s':>9s} {'export extra RSS MB (rank0/rank1)':>34s}")
    for variant, by_rank in rows.items():
        r0, r1 = by_rank[0], by_rank[1]
        print(f"{variant:10s} {r0['save_s']:7.2f} {r0['load_s']:7.2f} {r0['export_s']:9.2f} "
              f"{r0['export_extra_rss_MB']:17.0f} / {r1['export_extra_rss_MB']:.0f}")
    w, s = rows["whole"][0], rows["streamed"][0]
    print(f"streamed/whole: export time {s['export_s'] / w['export_s']:.2f}x, rank-0 extra memory "
          f"{s['export_extra_rss_MB'] / w['export_extra_rss_MB']:.2f}x")


if __name__ == "__main__":
    main()
