"""`golong selftest`: the first thing to run on a new machine or cluster (`make selftest`).

It builds its own tiny models (a dense Qwen3 with tied embeddings, like Qwen3-4B, and a Qwen3-MoE) and a
few rows of the demo's data in a work folder, then runs every path golong trains with, on whatever the
machine has (CUDA GPUs, or CPU), printing one line per check and exiting 1 if any check fails:

    PASS  prompt_once_attention  max |flex - exact| 2.2e-15 (values; gradients need CUDA)      1.4s
    SKIP  sleep_wake             sleep mode needs CUDA                                          0.0s
    FAIL  weight_sync            vLLM's greedy after the sync did not change ...               21.0s

Checks run in groups, each in its own time-boxed subprocess (`python -m golong.selftest worker GROUP`),
so a crash or a hang in one path fails that group's checks, naming the log, and the others still run:

    kernels            prompt_once_attention  flex_attention with golong's block mask vs exact SDPA per
                                              sequence (float64 on CPU; values and gradients on CUDA)
                       chunked_logprobs       golong's chunked LM-head log-probs and entropies vs naive
                                              log_softmax in float64, values and gradients
    engine             vllm_generation        vLLM generates, the same seeds give the same tokens, and the
                                              trainer's log-probs of vLLM's tokens are close to vLLM's own
                       sleep_wake             CUDA sleep mode frees and restores the engine's memory
                       weight_sync            after trainer steps and a weight sync, vLLM's greedy tokens are
                                              the greedy tokens of the trained weights (and changed)
    sequence_parallel  sequence_parallel      one batch on 2 ranks with sequence_parallel_size 2 vs 1: the
                                              same loss and gradient norm (needs 2 GPUs, or CPU)
    router_replay      router_replay          a 1-step `golong train` of the MoE with router replay: the
                                              trainer's router agrees with the engine's routes
    train_resume       train_resume           a 2-step `golong train`, then resumed to step 3: every step
                                              once, finite losses
                       streaming              the same with rollout.mode=streaming and partial rollouts:
                                              responses continued across weight syncs (vLLM's step loop,
                                              aborts, then sleep and wake), resumed from the carried state

Test-only: GOLONG_SELFTEST_BREAK=weight_sync skips the weight sync itself (the engine keeps its start-up
weights), so the suite can show that a broken path fails and is named.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

GROUPS: dict[str, tuple[str, ...]] = {
    "kernels": ("prompt_once_attention", "chunked_logprobs"),
    "engine": ("vllm_generation", "sleep_wake", "weight_sync"),
    "sequence_parallel": ("sequence_parallel",),
    "router_replay": ("router_replay",),
    "train_resume": ("train_resume", "streaming"),
}
CHECKS = tuple(check for checks in GROUPS.values() for check in checks)
BREAK_ENV = "GOLONG_SELFTEST_BREAK"  # test-only: "weight_sync" skips the real sync
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 7, 150, 12, 60, 61, 62, 63, 64]]  # token ids < 208, the vocabulary
TARGET = list(range(120, 144))  # what the trainer is taught in the weight_sync check, so its weights surely move


@dataclass
class Result:
    """One check's outcome: status PASS, FAIL or SKIP; `figure` the measurement (or the reason)."""

    name: str
    status: str
    figure: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:<5} {self.name:<22} {self.figure}  ({self.seconds:.1f}s)"


class CheckFailed(AssertionError):
    """A check's measurement is out of bounds: the message is its figure."""


def _device():
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _world_env() -> dict[str, str]:
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    try:
        import torch

        if not torch.cuda.is_available():
            env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------------------------------------
# The driver


def prepare(workdir: str, groups: list[str]) -> None:
    """The tiny models and the rows the groups need, under `workdir` (kept between runs: idempotent)."""
    from golong.console import quiet_imports

    quiet_imports()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from golong.data.synthetic import demo_corpus, demo_splits, write_rows
    from golong.demo import DEMO_MODEL
    from golong.tiny_model import build_tiny_model, build_tiny_moe_model

    build_tiny_model(os.path.join(workdir, "model"), corpus=demo_corpus(), spec=DEMO_MODEL)
    if "router_replay" in groups:
        build_tiny_moe_model(os.path.join(workdir, "moe"))
    rows = os.path.join(workdir, "data", "train.jsonl")
    if not os.path.exists(rows):
        write_rows(rows, demo_splits(train_docs=8, eval_docs=1, warmup_docs=1)["train"])


def run_group(group: str, workdir: str, timeout: float) -> list[Result]:
    """Run one group's worker; its checks' results, a crash or a timeout failing those it did not report."""
    results_file = os.path.join(workdir, "results", f"{group}.jsonl")
    log_file = os.path.join(workdir, "logs", f"{group}.log")
    os.makedirs(os.path.dirname(results_file), exist_ok=True)
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    if os.path.exists(results_file):
        os.remove(results_file)
    command = [sys.executable, "-m", "golong.selftest", "worker", group, "--workdir", workdir]
    if group == "sequence_parallel":
        nproc = _sequence_parallel_ranks()
        if nproc < 2:
            return [Result("sequence_parallel", "SKIP", "needs 2 GPUs (this machine has 1)")]
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={_free_port()}", "-m", "golong.selftest", "worker", group, "--workdir", workdir]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, **_world_env()}).returncode
            crash = None if code == 0 else f"worker exited {code}"
        except subprocess.TimeoutExpired:
            crash = f"no result within {timeout:.0f}s (--timeout)"
    results = {}
    if os.path.exists(results_file):
        with open(results_file) as f:
            for line in f:
                r = Result(**json.loads(line))
                results[r.name] = r
    missing = [c for c in GROUPS[group] if c not in results]
    for check in missing:
        reason = crash or "the worker reported nothing"
        results[check] = Result(check, "FAIL", f"{reason}: {_last_line(log_file)} (log: {log_file})",
                                time.perf_counter() - start)
    return [results[c] for c in GROUPS[group]]


def _sequence_parallel_ranks() -> int:
    import torch

    if torch.cuda.is_available():
        return 2 if torch.cuda.device_count() >= 2 else 1
    return 2  # CPU: two gloo processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or [""])[-1][:300]


def selftest(workdir: str, only: list[str] | None = None, timeout: float = 600.0, out=sys.stdout) -> int:
    """Run the checks (all, or `only`), printing one line each; 0 when none failed, else 1."""
    unknown = sorted(set(only or []) - set(CHECKS))
    if unknown:
        from golong.configlib import UsageError

        raise UsageError(f"unknown selftest check(s) {', '.join(unknown)}; valid: {', '.join(CHECKS)}")
    wanted = set(only or CHECKS)
    groups = [g for g, checks in GROUPS.items() if wanted & set(checks)]
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    print(f"golong selftest: {_machine()}; work folder {workdir}", file=out, flush=True)
    prepare(workdir, groups)
    failed = 0
    for group in groups:
        for result in run_group(group, workdir, timeout):
            if result.name in wanted:
                print(result.line(), file=out, flush=True)
                failed += result.status == "FAIL"
    verdict = f"{failed} check(s) FAILED" if failed else "all checks passed"
    print(f"golong selftest: {verdict} in {time.perf_counter() - started:.0f}s", file=out, flush=True)
    return 1 if failed else 0


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


# ------------------------------------------------------------------------------------------------
# The workers: each check returns its figure or raises CheckFailed (or any error: FAIL with its message)


class Reporter:
    """Appends each check's Result to the group's results file (rank 0 only under torchrun)."""

    def __init__(self, workdir: str, group: str, rank: int = 0):
        self.path = os.path.join(workdir, "results", f"{group}.jsonl")
        self.rank = rank

    def run(self, name: str, check, *args) -> None:
        start = time.perf_counter()
        try:
            status, figure = "PASS", check(*args)
            if isinstance(figure, tuple):  # (status, figure): SKIP
                status, figure = figure
        except Exception as e:  # noqa: BLE001 - a check's failure is its result, never the run's end
            status, figure = "FAIL", f"{type(e).__name__}: {e}" if not isinstance(e, CheckFailed) else str(e)
        self.write(Result(name, status, figure, time.perf_counter() - start))

    def write(self, result: Result) -> None:
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(asdict(result)) + "\n")


def _expect(ok: bool, figure: str) -> str:
    if not ok:
        raise CheckFailed(figure)
    return figure


# kernels ----------------------------------------------------------------------------------------


def check_prompt_once_attention() -> str:
    """flex_attention over golong's block mask vs exact per-sequence SDPA, on a row of three units (one
    prompt with three responses, an empty response included; one [prompt, response]; one long unit
    crossing tiles) with grouped-query heads: values, and on CUDA gradients."""
    import torch

    from golong.trainer.attention import flex_prompt_once_attention, per_sequence_attention

    device = _device()
    cuda = device.type == "cuda"
    dtype = torch.float32 if cuda else torch.float64  # the compiled CUDA kernel: fp32; CPU eager: fp64
    cu_seqlens = torch.tensor([0, 103, 133, 300], device=device)
    cu_segments = torch.tensor([0, 37, 57, 57, 103, 113, 133, 200, 300], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, h, 300, 32, generator=g, device=device, dtype=dtype, requires_grad=cuda)
               for h in (4, 2, 2))
    module = torch.nn.Module().eval()
    kwargs = dict(scaling=32 ** -0.5, cu_seq_lens_q=cu_seqlens, cu_segments=cu_segments)
    flex, _ = flex_prompt_once_attention(module, q, k, v, None, **kwargs)
    exact, _ = per_sequence_attention(module, q, k, v, None, **kwargs)
    error = (flex - exact).abs().max().item()
    bound = 2e-5 if cuda else 1e-10
    if not cuda:
        return _expect(error < bound, f"max |flex - exact| {error:.1e} < {bound:.0e} (values; flex's backward "
                                      "needs CUDA)")
    w = torch.randn(flex.shape, generator=g, device=device, dtype=dtype)
    grads = [torch.autograd.grad((out * w).sum(), (q, k, v)) for out in (flex, exact)]
    grad_error = max((a - b).abs().max().item() for a, b in zip(*grads))
    return _expect(error < bound and grad_error < 1e-4,
                   f"max |flex - exact| {error:.1e}, gradients {grad_error:.1e} (fp32, compiled flex)")


def check_chunked_logprobs() -> str:
    """golong's chunked LM-head log-probs and entropies (chunks of 7 tokens) vs naive log_softmax, float64."""
    import torch

    from golong.trainer.logprobs import token_logprobs

    device = _device()
    g = torch.Generator(device=device).manual_seed(1)
    f64 = dict(device=device, dtype=torch.float64)
    hidden = torch.randn(40, 16, generator=g, **f64).requires_grad_()
    weight = torch.randn(97, 16, generator=g, **f64).requires_grad_()
    labels = torch.randint(0, 97, (40,), generator=g, device=device)
    w_lp, w_ent = torch.randn(40, generator=g, **f64), torch.randn(40, generator=g, **f64)

    def outputs(logp, entropy):
        return (logp * w_lp + entropy * w_ent).sum()

    logp, entropy = token_logprobs(hidden, weight, labels, temperature=0.7, chunk_size=7, with_entropy=True)
    chunked = torch.autograd.grad(outputs(logp, entropy), (hidden, weight))
    log_p = (hidden @ weight.T / 0.7).log_softmax(-1)
    naive_logp, naive_entropy = log_p.gather(-1, labels[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)
    naive = torch.autograd.grad(outputs(naive_logp, naive_entropy), (hidden, weight))
    error = max((logp - naive_logp).abs().max().item(), (entropy - naive_entropy).abs().max().item())
    grad_error = max((a - b).abs().max().item() for a, b in zip(chunked, naive))
    return _expect(error < 1e-10 and grad_error < 1e-10,
                   f"max |chunked - naive| {error:.1e}, gradients {grad_error:.1e} (float64)")


def kernels_worker(workdir: str) -> None:
    report = Reporter(workdir, "kernels")
    report.run("prompt_once_attention", check_prompt_once_attention)
    report.run("chunked_logprobs", check_chunked_logprobs)


# engine -----------------------------------------------------------------------------------------


def _samples(prompts, responses):
    """One Group per (prompt, response), advantage 1."""
    from golong.trainer.batch import Group

    return [Group(prompt_ids=p, response_ids=[r], advantages=[1.0]) for p, r in zip(prompts, responses)]


def _trainer_logprobs(policy, samples):
    """(T,) the trainer's log-probs of every sample's response tokens, concatenated."""
    import torch

    from golong.trainer.batch import pack_groups

    return torch.cat([policy.old_logprobs(pack_groups([s])).float().cpu() for s in samples])


def _load_reference(model_dir: str):
    """A float32 transformers model on CPU, loaded before the PolicyEngine (while its ZeRO-3 config lives,
    transformers would partition any model it loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _with_trained_weights(reference, policy):
    """`reference` holding the trainer's current weights (gathered from their ZeRO-3 shards) rounded to
    bfloat16, the engine's dtype: what vLLM must compute after a weight sync."""
    import deepspeed
    import torch

    params = dict(policy.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        weights = {name: p.detach().to(torch.bfloat16).float().cpu() for name, p in params.items()}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(weights[name])
    return reference


def _greedy_gap(model, prompts, tokens) -> float:
    """How far `tokens` (vLLM's greedy continuations) are from greedy under `model`: the largest gap between
    the best logit and the chosen token's, teacher-forced. 0 when every token is the argmax; a bf16
    engine may take the other side of a near-tie (a gap of ~1e-3)."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for prompt, response in zip(prompts, tokens):
            if response:
                logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1: -1]
                chosen = logits.gather(-1, torch.tensor(response)[:, None])[:, 0]
                worst = max(worst, (logits.max(-1).values - chosen).max().item())
    return worst


def engine_worker(workdir: str) -> None:
    import torch

    from golong.console import quiet_imports

    quiet_imports()
    from golong.rollout import RolloutConfig, RolloutEngine, logprob_abs_diff
    from golong.rollout.engine import request_seeds
    from golong.trainer.batch import pack_groups
    from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
    from golong.trainer.engine import PolicyEngine
    from golong.trainer.loss import LossDenominator

    report = Reporter(workdir, "engine")
    model_dir = os.path.join(workdir, "model")
    reference = _load_reference(model_dir)
    policy = PolicyEngine(ModelConfig(path=model_dir, gradient_checkpointing=False),  # ZeRO-3, as the recipes
                          TrainerConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0),
                          PolicyLossConfig(agg_mode="token-mean"), IcePopConfig(mode="off"), temperature=1.0)
    cfg = RolloutConfig(n=4, max_response_length=8, gpu_memory_utilization=0.3, enforce_eager=True, seed=7,
                        sync_bucket_mb=1)
    rollout = RolloutEngine(cfg, model_dir, max_model_len=64, world=policy.world)
    seeds = request_seeds(cfg.seed, 0, range(len(PROMPTS)))
    cuda = torch.cuda.is_available() and rollout.sleep_mode

    def logprob_gap(batch) -> float:
        """Mean |trainer - vLLM| log-prob over the batch's response tokens."""
        samples = _samples([PROMPTS[i] for i in batch.prompt_index], batch.response_ids)
        return logprob_abs_diff(_trainer_logprobs(policy, samples), torch.cat([torch.tensor(lp) for lp in batch.logprobs]))

    def generation():
        first, again = rollout.generate(PROMPTS, seeds=seeds), rollout.generate(PROMPTS, seeds=seeds)
        _expect(first.response_ids == again.response_ids, "the same seeds gave different responses")
        gap = logprob_gap(first)
        return _expect(gap < 0.05, f"{len(first.response_ids)} responses ({sum(map(len, first.response_ids))} "
                                   f"tokens), seeded alike twice; mean |trainer - vLLM| log-prob {gap:.4f} < 0.05")

    report.run("vllm_generation", generation)
    before = {}  # greedy tokens of the start-up weights

    def train():  # A = 1 and ratio 1: the policy gradient raises the target's log-probs
        before["greedy"] = rollout.generate(PROMPTS, n=1, temperature=0.0).response_ids
        teach = _samples([TARGET[:4], TARGET[:8], TARGET[:12]], [TARGET[4:12], TARGET[8:16], TARGET[12:20]])
        for _ in range(6):
            denom = LossDenominator.build(teach, "token-mean", world=policy.world)
            for sample in teach:
                policy.forward_backward(pack_groups([sample]), denom)
            policy.optimizer_step()

    try:
        train()
    except Exception as e:  # noqa: BLE001 - the weight_sync check reports it
        before["error"] = e
    memory = {}  # CUDA: free bytes awake, then asleep

    def sleep_wake():
        if not cuda:
            rollout.sleep()  # the order (sleep, wake weights, sync, wake KV cache) is still checked
            return "SKIP", "sleep mode needs CUDA (here sleep and wake only keep their order)"
        torch.cuda.synchronize()
        memory["awake"] = torch.cuda.mem_get_info()[0]
        rollout.sleep()
        memory["asleep"], total = torch.cuda.mem_get_info()
        freed = memory["asleep"] - memory["awake"]
        return _expect(freed >= 0.5 * cfg.gpu_memory_utilization * total,
                       f"sleep freed {freed / 2**30:.1f} GiB (at least half of gpu_memory_utilization "
                       f"{cfg.gpu_memory_utilization} x {total / 2**30:.0f} GiB)")

    report.run("sleep_wake", sleep_wake)

    def weight_sync():
        if "error" in before:
            raise before["error"]
        rollout.wake_up_weights()
        if os.environ.get(BREAK_ENV) == "weight_sync":  # test-only: a sync's bookkeeping without the sync
            rollout.sleep_state.sync()
        else:
            rollout.sync_weights(policy.module)
        rollout.wake_up_kv_cache()
        woke = ""
        if cuda and "asleep" in memory:
            torch.cuda.synchronize()
            free = torch.cuda.mem_get_info()[0]
            _expect(free <= memory["awake"] + 2**30, f"wake-up left {(free - memory['awake']) / 2**30:.1f} GiB "
                                                     "more free than before sleep: the engine's memory is not back")
            woke = f"; wake-up took back {(memory['asleep'] - free) / 2**30:.1f} GiB"
        after = rollout.generate(PROMPTS, n=1, temperature=0.0).response_ids
        gap = _greedy_gap(_with_trained_weights(reference, policy), PROMPTS, after)
        unchanged = after == before["greedy"]
        _expect(not unchanged and gap < 0.1,
                f"vLLM's greedy tokens after trainer steps and a weight sync are {'un' * unchanged}changed "
                f"and {gap:.3f} logits from the trained weights' greedy (bound 0.1): the engine does not run "
                "the trained weights")
        lp_gap = logprob_gap(rollout.generate(PROMPTS, seeds=seeds))
        return _expect(lp_gap < 0.05, f"greedy after the sync = the trained weights' greedy (largest logit gap "
                                      f"{gap:.4f}), changed by training; log-prob gap {lp_gap:.4f}{woke}")

    report.run("weight_sync", weight_sync)
    rollout.close()


# sequence parallel ------------------------------------------------------------------------------


def _sp_step(model_dir: str, sp: int) -> tuple[float, float]:
    """One optimizer step of a fixed global batch on every rank with sequence_parallel_size `sp`:
    (the step's loss, the global gradient norm)."""
    import torch

    from golong.trainer.batch import Group
    from golong.trainer.config import IcePopConfig, ModelConfig, PolicyLossConfig, TrainerConfig
    from golong.trainer.engine import PolicyEngine
    from golong.trainer.loss import LossDenominator, PolicyLossStats
    from golong.trainer.packing import plan_step

    policy = PolicyEngine(ModelConfig(path=model_dir, dtype="float32", gradient_checkpointing=False),
                          TrainerConfig(lr=1e-3, warmup_steps=0, sequence_parallel_size=sp),
                          PolicyLossConfig(agg_mode="token-mean", entropy_coef=0.01), IcePopConfig(mode="off"),
                          temperature=0.9)
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(10, 200, (n,), generator=g).tolist()

    groups = [Group(prompt_ids=ids(9), response_ids=[ids(14)], advantages=[1.0], group_id=0),
              Group(prompt_ids=ids(13), response_ids=[ids(5), ids(8)], advantages=[-0.5, 1.5], group_id=1),
              Group(prompt_ids=ids(4), response_ids=[ids(11)], advantages=[-1.0], group_id=2),
              Group(prompt_ids=ids(6), response_ids=[ids(6)], advantages=[0.5], group_id=3)]
    # the global batch planned as a step plans it, with a budget of 2 units' tokens per row
    batch = plan_step(groups, policy.layout, max_tokens_per_rank=48 // sp, share_prompt=True)
    denom = LossDenominator.build(batch.counted, "token-mean", world=policy.world)
    stats = PolicyLossStats()
    for mb in batch.micro_batches:
        stats = stats + policy.forward_backward(mb, denom)
    step = policy.optimizer_step()
    loss = stats.all_reduce(policy.world).loss
    policy.close()
    return loss, step.grad_norm


def sequence_parallel_worker(workdir: str) -> None:
    import torch.distributed as dist

    from golong.console import quiet_imports

    quiet_imports()
    from golong.world import init_world

    world = init_world()
    report = Reporter(workdir, "sequence_parallel", world.rank)
    model_dir = os.path.join(workdir, "model")

    def check():
        plain = _sp_step(model_dir, 1)
        split = _sp_step(model_dir, world.size)
        loss_rel = abs(split[0] - plain[0]) / max(abs(plain[0]), 1e-12)
        norm_rel = abs(split[1] - plain[1]) / max(plain[1], 1e-12)
        bound = 1e-3 if _device().type == "cuda" else 1e-4
        return _expect(loss_rel < bound and norm_rel < bound,
                       f"sp={world.size} vs sp=1 on {world.size} ranks: loss {split[0]:.6f} vs {plain[0]:.6f} "
                       f"(rel {loss_rel:.1e}), grad norm {split[1]:.5f} vs {plain[1]:.5f} (rel {norm_rel:.1e})")

    report.run("sequence_parallel", check)
    dist.barrier()


# golong train ------------------------------------------------------------------------------------


def _recipe(workdir: str, name: str, model: str, **extra) -> str:
    """A tiny recipe for `golong train` on the selftest's own rows; returns its path."""
    import yaml

    recipe = {
        "model": {"path": model, "gradient_checkpointing": False},
        "data": {"train_files": [os.path.join(workdir, "data", "train.jsonl")], "prompts_per_step": 4,
                 "max_prompt_length": 512, "enable_thinking": False},
        "rollout": {"n": 4, "max_response_length": 8, "gpu_memory_utilization": 0.3, "enforce_eager": True,
                    "cpu_kvcache_space_gib": 1},
        "reward": {"num_workers": 1},
        "trainer": {"lr": 1e-3, "warmup_steps": 0, "micro_batch_max_tokens": 2048, "export_hf": False,
                    "output_dir": os.path.join(workdir, "runs", name)},
        "logging": {"plot": False},
    }
    for key, value in extra.items():  # "section.key"
        section, field = key.split("__")
        recipe[section][field] = value
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return path


def _golong_train(recipe: str, *overrides: str, log: str) -> str:
    """Run `golong train` in a subprocess (world of one); its output, or CheckFailed naming its last line."""
    proc = subprocess.run([sys.executable, "-m", "golong", "train", recipe, *overrides], capture_output=True,
                          text=True, env={**os.environ, **_world_env()})
    with open(log, "a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise CheckFailed(f"golong train exited {proc.returncode}: {_last_line(log)} (log: {log})")
    return proc.stdout + proc.stderr


def _metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def router_replay_worker(workdir: str) -> None:
    report = Reporter(workdir, "router_replay")

    def check():
        recipe = _recipe(workdir, "router_replay", os.path.join(workdir, "moe"), rollout__router_replay=True,
                         trainer__total_steps=1)
        _clear_run(workdir, "router_replay")
        _golong_train(recipe, "model.zero3_leaf_modules=[Qwen3MoeSparseMoeBlock]",
                      log=os.path.join(workdir, "logs", "router_replay.train.log"))
        (record,) = _metrics(os.path.join(workdir, "runs", "router_replay"))
        agreement = record["rollout/router_agreement"]
        return _expect(agreement > 0.95, f"trainer's router = the engine's routes for {agreement:.1%} of choices "
                                         "(> 95%; bf16 near-ties differ)")

    report.run("router_replay", check)


def _clear_run(workdir: str, name: str) -> None:
    import shutil

    shutil.rmtree(os.path.join(workdir, "runs", name), ignore_errors=True)


def train_resume_worker(workdir: str) -> None:
    report = Reporter(workdir, "train_resume")

    def train_then_resume(name: str, **recipe) -> list[dict]:
        """2 steps with a checkpoint each, then resumed to step 3: every step once, finite losses."""
        _clear_run(workdir, name)
        path = _recipe(workdir, name, os.path.join(workdir, "model"), trainer__total_steps=2, trainer__save_every=1,
                       **recipe)
        log = os.path.join(workdir, "logs", f"{name}.train.log")
        _golong_train(path, log=log)
        output = _golong_train(path, "trainer.total_steps=3", log=log)
        _expect("resuming from" in output, "the second run did not say it resumed")
        records = _metrics(os.path.join(workdir, "runs", name))
        steps = [r["step"] for r in records]
        _expect(steps == [1, 2, 3], f"steps logged {steps}, expected [1, 2, 3]")
        losses = [r["actor/loss"] for r in records]
        _expect(all(math.isfinite(x) for x in losses), f"losses {losses}")
        return records

    def check():
        records = train_then_resume("train_resume")
        losses = ", ".join(f"{r['actor/loss']:.4f}" for r in records)
        return f"2 steps, checkpoints, resumed to step 3: steps {[r['step'] for r in records]}, losses {losses}"

    report.run("train_resume", check)

    def streaming():
        # 16 groups generating for a 4-group step, a check after every engine step: each step leaves groups
        # for the next, which trains them after the weight sync (responses stopped halfway continue then; the
        # selftest's untrained model mostly writes to max_response_length, so its groups finish together)
        records = train_then_resume("streaming", rollout__mode="streaming", rollout__partial=True,
                                    rollout__stream_check_steps=1, rollout__stream_max_groups=16)
        _expect(all(r["batch/trained_prompts"] == 4 for r in records),
                f"groups trained {[r['batch/trained_prompts'] for r in records]}, expected 4 a step")
        continued = sum(r["rollout/partial_responses"] for r in records[1:])
        _expect(records[0]["rollout/carried_groups"] > 0, "step 1 left no group for step 2")
        _expect(max(r["rollout/policy_lag_max"] for r in records[1:]) >= 1,
                "no group generated before a weight sync was trained after it")
        return (f"3 streaming steps (one resumed), groups carried over {[r['rollout/carried_groups'] for r in records]}, "
                f"{continued:.0f} trained responses continued across a sync, "
                f"policy lag <= {max(r['rollout/policy_lag_max'] for r in records):.0f}")

    report.run("streaming", streaming)


WORKERS = {"kernels": kernels_worker, "engine": engine_worker, "sequence_parallel": sequence_parallel_worker,
           "router_replay": router_replay_worker, "train_resume": train_resume_worker}


# ------------------------------------------------------------------------------------------------
# Command line


def add_selftest_command(sub) -> None:
    p = sub.add_parser("selftest", help="check every path golong trains with on this machine (run it first)")
    p.add_argument("--only", nargs="+", metavar="CHECK", help=f"run only these checks: {', '.join(CHECKS)}")
    p.add_argument("--workdir", default="runs/selftest", help="models, data, logs (default runs/selftest)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per group of checks (default 600)")
    p.set_defaults(func=lambda args: selftest(args.workdir, args.only, args.timeout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m golong.selftest")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("worker", help="(internal) run one group of checks")
    p.add_argument("group", choices=sorted(WORKERS))
    p.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    WORKERS[args.group](args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
