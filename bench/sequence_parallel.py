"""Memory per rank of one training step on one long row: sequence parallelism 1 vs 2 (CPU, gloo).

A tiny Qwen3 with a wide hidden size (so activations, not the vocabulary, dominate) trains one packed
row of --tokens tokens (one prompt + a 512-token response) with ZeRO-3, gradient checkpointing on, as
`golong train` does: sp = 1 on one rank, then sp = 2 on two ranks (an SP group of two holding half
the row each), at every row length, in the same run. Each rank runs one warm-up step (AdamW
allocates its state), then measures a second step phase by phase (`PhaseMemory`): the peak of the
forward, what the forward keeps for the backward, the peak of the backward, the optimizer step.

What is measured: resident memory (VmRSS, and VmHWM for peaks, from /proc/self/status: every thread
of the rank, tensors and everything else) above the rank's resident memory before the step, with
glibc told to give every block of >= 64 KiB its own mmap (MALLOC_ENV) so that a freed tensor leaves
RSS at once. At sp = 1 these figures equal the tensor bytes torch's profiler counts (checked with
--explain); the profiler itself cannot measure sp = 2 (see `explain_step`).

Two kinds of figures:
- per row length: MiB per rank above the step's start, and the ratio of sp = 2 to sp = 1. These
  include fixed costs that do not depend on the row: at sp = 2 ZeRO-3 gathers the parameters (and
  reduce-scatters gradients) during the step, which one rank at sp = 1 holds whole before it.
- per row token (with two or more lengths): the least-squares slope of each figure over the row
  lengths, which drops the fixed costs: activation memory per rank. A slope means something only where
  activations set the peak at every length: here rows of 4K tokens and more (at 1-2K the step peaks in
  the optimizer and the backward's peak is set by fixed buffers).

    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --tokens 4096,8192,16384
    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --tokens 4096 --explain 12   # what is alive at the peak
    PYTHONPATH=. .venv/bin/python bench/sequence_parallel.py --project-only     # the 176K projection

The projection for Qwen3-4B / Qwen3-30B-A3B (`project`) is arithmetic, not a measurement, built on
what was measured (the kept tensors and their halving here, LAYER_FACTOR on one H200): bf16, gradient
checkpointing, flash-attn varlen (no T x T matrix), ZeRO-3 over the GPUs, the chunked LM head.
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


def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


class PhaseMemory:
    """Resident memory of one step, phase by phase, above the resident memory before the step.

    Phases are back-to-back windows: forward = the model's forward (and the SP gather) up to the
    per-token log-probs; backward = the loss and its backward (ZeRO-3's reduce-scatter included);
    optimizer = the AdamW step. A window's peak is VmHWM (the kernel's high-water mark, every
    thread) reset at its start; `kept` is VmRSS at the window's end."""

    def __init__(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = rss_bytes()
        self.peak, self.kept = {}, {}
        reset_peak()

    def end(self, name: str) -> None:
        self.peak[name] = rss_bytes("VmHWM") - self.base
        self.kept[name] = rss_bytes() - self.base
        reset_peak()

    def after(self, name: str, fn):
        """`fn` that ends the window `name` when it returns."""
        def run(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.end(name)
            return out
        return run


def worker(model_dir: str, tokens: int, sp: int, out: str, explain: int = 0) -> None:
    import torch

    from golong.trainer.batch import Group, pack_groups
    from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
    from golong.trainer.engine import PolicyEngine
    from golong.trainer.loss import LossDenominator

    engine = PolicyEngine(ModelConfig(path=model_dir), TrainerConfig(sequence_parallel_size=sp, warmup_steps=0),
                          PolicyLossConfig(), IcePopConfig(mode="off"), temperature=1.0)
    g = torch.Generator().manual_seed(0)
    response = 512
    sample = Group(prompt_ids=torch.randint(0, 200, (tokens - response,), generator=g).numpy(),
                   response_ids=[torch.randint(0, 200, (response,), generator=g).numpy()], advantages=1.0)
    mb = pack_groups([sample])
    # [SP] the group's one sequence counted once, on its first rank
    denom = LossDenominator.build([sample] if engine.layout.counts_once else [], "token-mean", world=engine.world)
    engine.forward_backward(mb, denom)  # warm-up: AdamW's state is allocated by the first step
    engine.optimizer_step()
    if explain:
        return explain_step(engine, mb, denom, f"{out}.{engine.layout.sp_rank}", explain)
    run, backward = engine._run, engine.ds_engine.backward
    memory = PhaseMemory()
    engine._run = memory.after("forward", run)
    engine.ds_engine.backward = memory.after("backward", backward)
    start = time.perf_counter()
    engine.forward_backward(mb, denom)
    engine.optimizer_step()
    memory.end("optimizer")
    seconds = time.perf_counter() - start
    result = {"rank": engine.layout.rank, "sp": sp, "tokens": tokens,
              "base": memory.base, "peak": memory.peak, "kept": memory.kept, "seconds": seconds}
    with open(f"{out}.{result['rank']}", "w") as f:
        json.dump(result, f)
    engine.close()


def explain_step(engine, mb, denom, out: str, top: int) -> None:
    """Profile one step's CPU tensor allocations (torch.profiler, profile_memory) and write the `top`
    largest groups of tensors alive at the backward's peak, by allocating source line and operator.

    Exact tensor bytes for what this thread allocates and frees; a tensor whose last reference is
    dropped on gloo's worker thread (all-to-all and all-gather buffers) is never reported freed, so
    with sp > 1 such buffers can show up as live here although they are not (VmHWM is the measure)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    backward = engine.ds_engine.backward

    def marked_backward(*args, **kwargs):
        with record_function("bench/backward"):
            return backward(*args, **kwargs)

    engine.ds_engine.backward = marked_backward
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        engine.forward_backward(mb, denom)
        engine.optimizer_step()
    allocations = []  # (time, bytes allocated so far in the step, size (< 0: freed), address, allocating source)
    window = []

    def walk(node, frames, op):
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            allocations.append((node.start_time_ns, f.total_allocated, f.alloc_size, f.ptr, (frames, op)))
        elif node.name == "bench/backward":
            window.extend([node.start_time_ns, node.end_time_ns])
        elif node.tag == _EventType.PyCall and "/torch/" not in node.name and "einops" not in node.name:
            frames = (frames + (node.name,))[-2:]
        elif node.tag == _EventType.TorchOp:
            shapes = [list(i.sizes) for i in node.extra_fields.inputs if hasattr(i, "sizes")][:2]
            op = f"{node.name} {shapes}"
        for child in node.children:
            walk(child, frames, op)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, (), "")
    allocations.sort(key=lambda a: a[0])
    inside = [i for i, a in enumerate(allocations) if window[0] <= a[0] <= window[1]]
    peak = max(inside, key=lambda i: allocations[i][1])
    live = {}
    for _, _, size, ptr, source in allocations[:peak + 1]:
        if size > 0:
            live[ptr] = (size, source)
        else:
            live.pop(ptr, None)
    groups: dict = {}
    for size, (frames, op) in live.values():
        key = f"{' < '.join(reversed(frames))} | {op}"
        groups[key] = groups.get(key, 0) + size
    with open(out, "w") as f:
        json.dump({"peak": allocations[peak][1], "live": sorted(groups.items(), key=lambda kv: -kv[1])[:top]}, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# glibc: every block of 64 KiB or more is its own mmap, unmapped when freed, and the heap's top is
# trimmed at once, so VmRSS follows what is live (page-granular; small blocks below 64 KiB may stay).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


def run(model_dir: str, tokens: int, sp: int, tmp: str, explain: int = 0) -> list[dict]:
    out = os.path.join(tmp, f"sp{sp}_{tokens}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), **MALLOC_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={sp}", f"--master_port={free_port()}",
           __file__, WORKER, model_dir, str(tokens), str(sp), out, str(explain)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"sp={sp} tokens={tokens} failed:\n{proc.stderr[-4000:]}")
    ranks = [json.load(open(f"{out}.{r}")) for r in range(sp)]
    print(f"row {tokens}, sp {sp}: {json.dumps(ranks)}", flush=True)  # the raw figures, as they come
    return ranks


GIB = 2**30
# From the models' HF configs: hidden, layers, query heads, KV heads, head_dim, parameters (B), and the
# values per token one layer's forward creates when it is recomputed (`layer_values`):
#   attention: norm in/out, residual, q, k, v, rotated q/k, attention out, o_proj out
#              = 5 H + 3 q + 3 kv with q = heads x head_dim, kv = KV heads x head_dim
#   dense MLP: gate, up, act(gate), act(gate) * up = 4 I
#   MoE (top-k of E experts, HF's per-expert loop): router logits 2E (fp32) + k x 4 I (expert MLPs)
#              + 2 k H (tokens gathered to and returned from their experts)


def layer_values(hidden: int, q: int, kv: int, mlp: int) -> int:
    return 5 * hidden + 3 * q + 3 * kv + mlp


MODELS = {
    "Qwen3-4B": dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, params=4.02, vocab=151936,
                     per_token=layer_values(2560, 4096, 1024, 4 * 9728), offload=False),
    "Qwen3-30B-A3B": dict(hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128, params=30.5, vocab=151936,
                          per_token=layer_values(2048, 4096, 512, 2 * 128 + 8 * 4 * 768 + 2 * 8 * 2048), offload=True),
}
# Measured by this bench (bench/RESULTS.md, sp = 1, bytes per row token): the tensors kept from the
# forward for the backward are exactly one hidden state per layer (the checkpoints) plus the final
# norm's saved input and output over the whole row (2 H in fp32; in bf16 the norm's fp32 upcast
# makes it 4 + 2 B per value); the backward's peak adds a factor x one layer's forward values
# (`layer_values`): the recomputed layer's activations and the gradients alive at its MLP's backward.
# At sp = 2 every one of these halves per rank. Ulysses' copies of q, k, v and the attention output
# (its all-to-all buffers and the whole-row, heads / sp layouts) live while attention runs and are
# freed before the MLP, where the step peaks: they add nothing to the peak (measured: the sp = 2
# slope is half of sp = 1's).
# The factor: 1.34 on this bench's tiny model (fp32, CPU SDPA). On one H200 (bench/RESULTS.md, GPU proof)
# Qwen3-4B at sp = 1 in bf16 took 50.6 GiB above its ZeRO-3 states and the 1.4 GiB LM head at 131,072
# tokens: 414,500 B per token = the kept 199,680 + 1.60 x its 134,144 B of layer values. The projection
# is for bf16 GPUs, so it uses the GPU's factor.
LAYER_FACTOR = 1.60
FINAL_NORM_BYTES = 6  # per hidden value and token in bf16: the fp32 upcast (4 B) and the normalised bf16 (2 B)


def project(name: str, tokens: int, sp: int, gpus: int, chunk: int = 1024) -> dict:
    """GiB per GPU of one training step on a row of `tokens` tokens (see MODELS for the terms)."""
    m = MODELS[name]
    local = tokens / sp
    kept = local * m["hidden"] * (2 * m["layers"] + FINAL_NORM_BYTES) / GIB  # bf16 checkpoints + final norm
    layer = LAYER_FACTOR * local * m["per_token"] * 2 / GIB  # the recomputed layer at its backward, bf16
    head = 2.5 * chunk * m["vocab"] * 4 / GIB  # chunked log-probs: ~2.5 fp32 [chunk, V] blocks
    # ZeRO-3 states per parameter: bf16 weight 2 B + fp32 gradient 4 B + fp32 master and AdamW 12 B,
    # of which only the bf16 weight and a bf16 gradient stay on the GPU with offload_optimizer
    states = m["params"] * 1e9 * (4 if m["offload"] else 18) / gpus / GIB
    # gathered bf16 parameters: at least two layers (one in use, one prefetched) and the embedding; and ZeRO-3
    # keeps up to stage3_max_live_parameters (1e9 by default) gathered between uses (the bench saw the
    # whole 25M-parameter tiny model stay gathered from the forward to the backward)
    two_layers_and_embedding = 2 * m["params"] * 1e9 / m["layers"] + m["vocab"] * m["hidden"]
    gathered = max(two_layers_and_embedding, min(m["params"] * 1e9, 1e9)) * 2 / GIB
    parts = dict(kept=kept, layer=layer, lm_head=head, zero3_states=states, gathered=gathered)
    return {**parts, "total": sum(parts.values())}


def print_projection(tokens: int = 163840 + 16384) -> None:
    print(f"\nprojection (arithmetic, GiB per GPU) for one {tokens}-token row (160K prompt + 16K response):")
    print("| model | GPUs | sp | tokens per rank | kept for backward | recomputed layer | LM head | ZeRO-3 states "
          "| gathered params | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, gpus in (("Qwen3-4B", 8), ("Qwen3-30B-A3B", 8), ("Qwen3-30B-A3B", 16)):
        for sp in (1, 2, 4, 8):
            p = project(name, tokens, sp, gpus)
            print(f"| {name} | {gpus} | {sp} | {tokens // sp} | {p['kept']:.1f} | {p['layer']:.1f} "
                  f"| {p['lm_head']:.1f} | {p['zero3_states']:.1f} | {p['gathered']:.1f} | {p['total']:.1f} |")


MIB = 2**20
PHASES = ("forward", "backward", "optimizer")


def worst(ranks: list[dict], key: str, phase: str | None = None) -> float:
    """The largest value over the ranks of an SP group (the rank that needs the most memory)."""
    return max(r[key][phase] if phase else r[key] for r in ranks)


def step_peak(rank: dict) -> float:
    return max(rank["peak"].values())


def print_phases(results: dict) -> None:
    print("\nMiB per rank above the rank's resident memory before the step (the worst rank of the SP group);"
          " ratio = sp 2 / sp 1 at the same row")
    print("| row tokens | sp | tokens per rank | forward peak | kept for backward | backward peak | optimizer peak "
          "| step peak (ratio) | absolute peak RSS | step seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (tokens, sp), ranks in results.items():
        peak = max(step_peak(r) for r in ranks)
        ratio = peak / max(step_peak(r) for r in results[tokens, 1])
        print(f"| {tokens} | {sp} | {tokens // sp} | {worst(ranks, 'peak', 'forward') / MIB:.0f} "
              f"| {worst(ranks, 'kept', 'forward') / MIB:.0f} | {worst(ranks, 'peak', 'backward') / MIB:.0f} "
              f"| {worst(ranks, 'peak', 'optimizer') / MIB:.0f} | {peak / MIB:.0f} ({ratio:.2f}) "
              f"| {max(r['base'] + step_peak(r) for r in ranks) / MIB:.0f} "
              f"| {max(r['seconds'] for r in ranks):.0f} |")


def print_explained(results: dict) -> None:
    for (tokens, sp), ranks in results.items():
        for rank, r in enumerate(ranks):
            print(f"\nrow {tokens} tokens, sp {sp}, rank {rank}: {r['peak'] / MIB:.0f} MiB of tensors allocated in "
                  f"the step alive at the backward's peak, largest groups "
                  f"(MiB | allocated at | operator [input shapes]):")
            for source, size in r["live"]:
                print(f"{size / MIB:8.1f} | {source}")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def print_slopes(results: dict, lengths: list[int], layer_bytes: int) -> None:
    """Bytes per row token: the part of each figure that grows with the row (fixed costs drop out)."""
    metrics = {"kept for backward": lambda r: r["kept"]["forward"], "forward peak": lambda r: r["peak"]["forward"],
               "backward peak": lambda r: r["peak"]["backward"], "step peak": step_peak}
    print(f"\nactivation memory per rank: bytes per row token (least-squares slope over rows of {lengths} tokens; "
          "meaningful where activations set every peak)")
    print("| measure | sp 1 | sp 2 | ratio sp 2 / sp 1 |")
    print("|---|---|---|---|")
    slopes = {}
    for name, value in metrics.items():
        per_sp = [slope(lengths, [max(value(r) for r in results[t, sp]) for t in lengths]) for sp in (1, 2)]
        print(f"| {name} | {per_sp[0]:.0f} | {per_sp[1]:.0f} | {per_sp[1] / per_sp[0]:.2f} |")
        slopes[name] = per_sp[0]
    factor = (slopes["backward peak"] - slopes["kept for backward"]) / layer_bytes
    print(f"sp 1: backward peak - kept = {factor:.2f} x one layer's forward values ({layer_bytes} B per token; "
          f"the projection's LAYER_FACTOR is {LAYER_FACTOR})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="4096,8192,16384", help="comma-separated row lengths")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--project-only", action="store_true", help="print the 176K projection and stop")
    parser.add_argument("--explain", type=int, default=0, metavar="N",
                        help="instead of measuring: profile one step per row and sp, print the N largest "
                             "groups of tensors alive at each rank's peak (source line, operator, input shapes)")
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
        lengths = [int(t) for t in args.tokens.split(",")]
        if args.explain:
            explained = {(t, sp): run(model_dir, t, sp, tmp, args.explain) for t in lengths for sp in (1, 2)}
            return print_explained(explained)
        results = {(tokens, sp): run(model_dir, tokens, sp, tmp) for tokens in lengths for sp in (1, 2)}
    print_phases(results)
    if len(lengths) > 1:
        print_slopes(results, lengths, 4 * layer_values(args.hidden, spec.num_heads * 128, 2 * 128,
                                                        4 * spec.intermediate_size))  # fp32
    print_projection()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    else:
        main()
