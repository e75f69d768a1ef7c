"""The GoLongRL training loop. One step is the algorithm of paper section 4, top to bottom:

    1. prompts      a uniform batch of dataset rows (Eq. 4)                      golong/data
    2. rollouts     G responses per prompt from the current policy (vLLM)        golong/rollout
    3. rewards      one verifiable score per response                            golong/rewards
    4. advantages   over the whole batch: GRPO | Dr.GRPO | TMN-Reweight | yours   golong/advantage
    5. pack         prompt-once groups [prompt, r_1..r_k] (this rank's share) into token-budget micro-batches
    6. old log-probs under the policy that sampled, when the update's first forward cannot give them
    7. update       ppo_epochs x (forward/backward per micro-batch, optimizer step)
    8. sync         the new weights into the vLLM engine

Stages 1-3 are the rollout collector's (golong/rollout/collect.py): with dynamic sampling it repeats
them in rounds until the step has data.prompts_per_step groups whose rewards differ. With
rollout.mode=streaming they run through vLLM's engine step loop instead, prompts flowing in as groups
finish (golong/rollout/streaming.py; partial rollouts carry unfinished responses over the weight sync).

Every rank runs the same loop (torchrun); each rank's vLLM engine generates for its share of the
prompts, then every rank sees every response (`RolloutCollector.collect` gathers them), so advantages
use whole-batch task statistics and micro-batches are balanced over all ranks.

Validation (trainer.val_every) is golong/trainer/validate.py's, outside the step: before the first step and
after every val_every-th one, with the same collector class on the same engine; its val/ metrics join the
step's line of metrics.jsonl.
"""
from __future__ import annotations

import logging
import math
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import yaml

from golong import advantage as advantage_lib
from golong.config import Config
from golong.console import setup_console
from golong.configlib import ConfigError, to_dict
from golong.data.prompt_set import PromptSet, read_prompt_set
from golong.data.sampler import PromptSampler
from golong.rewards import RewardScorer
from golong.rollout import RolloutEngine, logprob_abs_diff
from golong.rollout.collect import RolloutCollector, Rollouts, StepRollouts, stop_token_ids
from golong.rollout.streaming import StreamingCollector
from golong.trainer.batch import Group
from golong.trainer.checkpoint import Checkpointer, RunState
from golong.trainer.engine import PolicyEngine
from golong.trainer.export import export_hf
from golong.trainer.loss import LossDenominator, PolicyLossStats, resolve_agg_mode
from golong.trainer.metrics import MetricsLogger, PhaseTimer
from golong.trainer.packing import StepBatch, plan_step
from golong.replay.trainer import RouteExtras, configure_router_replay
from golong.trainer.validate import Validator
from golong.world import ParallelLayout, World, init_world

logger = logging.getLogger("golong")


@dataclass
class Run:
    """Everything a step touches: the config and the components."""

    cfg: Config
    world: World
    layout: ParallelLayout  # this rank in vLLM's TP groups and the trainer's SP groups (built once)
    data: PromptSet
    sampler: PromptSampler  # draws one round of prompts per call
    policy: PolicyEngine
    rollout: RolloutEngine
    collector: RolloutCollector  # stages 1-3: prompts -> scored responses of every rank
    stream: StreamingCollector | None  # rollout.mode=streaming: stages 1-3 through vLLM's step loop instead of rounds
    estimator: advantage_lib.AdvantageEstimator
    agg_mode: str  # resolved loss aggregation (Eq. 3, Eq. 4 or DAPO's token mean)
    constant_norm_length: int  # Dr.GRPO's L (Eq. 3), used by agg_mode constant-norm


# ------------------------------------------------------------------------------------------------
# One training step


def train_step(run: Run, timer: PhaseTimer) -> dict[str, float]:
    cfg, world, policy = run.cfg, run.world, run.policy

    # 1-3. prompts -> G responses each -> rewards (more rounds while dynamic sampling drops groups)
    sampling = collect_rollouts(run)
    rollouts, sampled = sampling.train, sampling.sampled
    collected = {**sampling.metrics(), "time/rollout": sampled.generate_seconds, "time/reward": sampled.score_seconds}
    if not len(rollouts):  # every prompt filtered, or (dynamic sampling) no group with differing rewards
        logger.warning("step with nothing to train on (%d responses sampled): no update", len(sampled))
        return {"batch/responses": 0.0, **collected, **(reward_metrics(run, sampled) if len(sampled) else {})}
    run.rollout.sleep()  # CUDA: free the engine's memory for training (a no-op on CPU)

    # 4. advantages over the whole batch (every rank computes the same)
    with timer.phase("advantage"):
        advantages = run.estimator(rollouts.rewards, rollouts.group_index, rollouts.task_index)

    # 5. the step's prompt groups -> prompt-once units -> this rank's (SP group's) token-budget micro-batches
    groups = Group.from_rollouts(rollouts, run.data.prompts, advantages, cfg.rollout.overlong_mask)
    batch = plan_step(groups, run.layout, cfg.trainer.micro_batch_max_tokens, cfg.trainer.share_prompt,
                      extras=route_extras(run, rollouts))  # MoE router replay: the routes of this rank's units

    # 6. old log-probs: a separate pass only where the update's first forward cannot give them
    with timer.phase("old_logprobs"):
        replay_metrics = policy.prepare_old_logprobs(batch.micro_batches, cfg.algorithm.ppo_epochs)

    # 7. update: the step's loss denominator is fixed once, over all micro-batches and ranks
    denom = LossDenominator.build(batch.counted, run.agg_mode, run.constant_norm_length, world=world)
    loss_stats, skipped = PolicyLossStats(), 0  # summed over the epochs' micro-batches; non-finite updates
    with timer.phase("update"):
        for _ in range(cfg.algorithm.ppo_epochs):
            for mb in batch.micro_batches:
                loss_stats = loss_stats + policy.forward_backward(mb, denom)
            step_stats = policy.optimizer_step()
            skipped += step_stats.skipped_steps

    # 8. weight sync into vLLM: weights woken first (level 2: contents garbage), the KV cache only after the sync
    with timer.phase("sync"):
        sync = run.rollout.update_weights(policy.module)  # wake_up_weights -> sync_weights -> wake_up_kv_cache

    return {**reward_metrics(run, sampled), **collected, **replay_metrics, **length_bias(rollouts, sampled),
            **update_metrics(run, rollouts, batch, loss_stats.all_reduce(world), step_stats, skipped),
            "sync/peak_extra_mb": sync.peak_extra_bytes / 2**20}


def collect_rollouts(run: Run) -> StepRollouts:
    """Stages 1-3 for one step: one round of data.prompts_per_step prompts, or with dynamic sampling
    (DAPO, as the released GoLongRL scripts train) rounds of dynamic_sampling.prompts_per_round prompts
    until data.prompts_per_step groups with differing rewards exist (at most max_rounds rounds).
    rollout.mode=streaming: prompts stream through the engines until that many groups have finished
    (golong/rollout/streaming.py), drawing at most max_rounds rounds' worth of prompts (without dynamic
    sampling a bound only prompts the engine filters out as too long can reach)."""
    dynamic = run.cfg.algorithm.dynamic_sampling
    if run.stream is not None:
        return run.stream.collect_step(run.sampler, run.cfg.data.prompts_per_step, filter_groups=dynamic.enabled,
                                       max_prompts=dynamic.max_rounds * round_size(run.cfg))
    return run.collector.collect_step(run.sampler.next_batch, run.cfg.data.prompts_per_step,
                                      filter_groups=dynamic.enabled, max_rounds=dynamic.max_rounds,
                                      step=run.sampler.batches_drawn)  # seeds: unique per step, resumable


def route_extras(run: Run, rollouts: Rollouts) -> RouteExtras | None:
    """MoE router replay's planner hook: each rank's units' routes, fetched point to point from the ranks
    that generated them (None without routes)."""
    if rollouts.routes is None:
        return None
    return RouteExtras(rollouts.routes, run.collector.fetch_routes, run.world.rank)


# ------------------------------------------------------------------------------------------------
# Step metrics


def reward_metrics(run: Run, rollouts: Rollouts) -> dict[str, float]:
    """Reward mean and pass rate, overall and per task; response lengths; scorer incidents."""
    rewards, tasks = rollouts.rewards.double(), rollouts.task_index
    passed = (rewards >= run.cfg.reward.pass_threshold).double()
    lengths = np.array([len(r) for r in rollouts.response_ids], dtype=np.float64)
    metrics = {
        "reward/mean": rewards.mean().item(),
        "reward/pass_rate": passed.mean().item(),
        "reward/timeouts": float(rollouts.reward_timeouts),
        "reward/errors": float(rollouts.reward_errors),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/min": float(lengths.min()),
        "response_length/truncated_ratio": float(rollouts.truncated.mean()),
        "rollout/num_filtered_prompts": float(rollouts.num_filtered),
        "rollout/tokens_per_s": rollouts.generation_tokens_per_s,
        "batch/prompts": float(rollouts.num_groups),
        # Identifies the step's prompts: equal in a resumed and an uninterrupted run of the same recipe.
        "batch/fingerprint": float(zlib.crc32(np.asarray(sorted(set(rollouts.example_index)), dtype=np.int64).tobytes())),
        "batch/responses": float(len(rollouts)),
    }
    for t, name in enumerate(run.data.tasks):
        of_task = tasks == t
        if of_task.any():
            metrics[f"reward/{name}/mean"] = rewards[of_task].mean().item()
            metrics[f"reward/{name}/pass_rate"] = passed[of_task].mean().item()
    return metrics


def length_bias(trained: Rollouts, sampled: Rollouts) -> dict[str, float]:
    """Whether selecting groups (dynamic sampling keeps those whose rewards differ) shifts the trained
    responses' length: the trained groups' mean response length, and its ratio to the mean over every
    finished response of the step (response_length/mean). 1.0: no bias."""
    def mean_length(r: Rollouts) -> float:
        return float(np.mean([len(ids) for ids in r.response_ids])) if len(r) else 0.0

    trained_mean, sampled_mean = mean_length(trained), mean_length(sampled)
    return {"response_length/trained_mean": trained_mean,
            "response_length/trained_vs_sampled": trained_mean / sampled_mean if sampled_mean else 1.0}


def update_metrics(run: Run, rollouts: Rollouts, batch: StepBatch, loss_stats: PolicyLossStats,
                   step_stats, skipped: int) -> dict[str, float]:
    """What was trained and how the update went (loss_stats already summed over ranks)."""
    return {
        "batch/trained_prompts": float(rollouts.num_groups),
        "batch/trained_responses": float(len(rollouts)),
        **run.estimator.last_stats.as_metrics(dict(enumerate(run.data.tasks))),
        **{f"actor/{k}": v for k, v in loss_stats.metrics().items()},
        **{f"actor/{k}": float(v) for k, v in asdict(step_stats).items()},
        "actor/skipped_steps": float(skipped),
        "actor/prompt_reuse": batch.num_responses / max(batch.num_units, 1),  # responses per prompt pass (1.0: one each)
        "rollout/logprob_abs_diff": step_logprob_abs_diff(run, batch.micro_batches),
    }


def step_logprob_abs_diff(run: Run, micro_batches) -> float:
    """rollout/logprob_abs_diff over every rank's response tokens of the step."""
    real = [mb for mb in micro_batches if mb.num_real_tokens]
    count = sum(mb.labels.numel() for mb in real)
    local = logprob_abs_diff(torch.cat([mb.old_logprobs.cpu() for mb in real]),
                             torch.cat([mb.rollout_logprobs for mb in real])) if real else 0.0
    total, count = run.world.all_reduce_sum([local * count, count])
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------
# Setup and the outer loop


class TrainingStopped(RuntimeError):
    """The run cannot go on (trainer.max_skipped_steps non-finite steps in a row); its checkpoints are intact."""


def count_skipped(cfg: Config, world: World, step: int, step_metrics: dict[str, float], in_a_row: int) -> int:
    """The non-finite guard's outer half: steps skipped in a row so far, this one included; a warning per
    skipped step, and TrainingStopped once trainer.max_skipped_steps are skipped in a row (before the
    step's checkpoint, so the newest checkpoint holds the last good weights)."""
    if not step_metrics.get("actor/skipped_steps"):
        return 0
    in_a_row += 1
    limit = cfg.trainer.max_skipped_steps
    if world.is_main:
        logger.warning("step %d: a loss or the global gradient norm (%s) is not finite: update skipped, weights and "
                       "optimizer state unchanged (%d in a row; the run stops at trainer.max_skipped_steps=%d)",
                       step, step_metrics.get("actor/grad_norm"), in_a_row, limit)
    if in_a_row >= limit:
        raise TrainingStopped(f"trainer.max_skipped_steps: {in_a_row} steps in a row (up to step {step}) had a "
                              "non-finite loss or gradient norm, so the run stops; the newest checkpoint holds the "
                              "last good weights. Fix: look for the cause (learning rate, data, rollout/trainer "
                              "mismatch) before resuming, or raise trainer.max_skipped_steps")
    return in_a_row


def streaming_collector(cfg: Config, collector: RolloutCollector) -> StreamingCollector | None:
    """rollout.mode=streaming's collector (None in sync mode): rollout.stream_max_groups slots per engine, by
    default a round's share (data.prompts_per_step, or dynamic_sampling.prompts_per_round, over the engines)."""
    if cfg.rollout.mode != "streaming":
        return None
    slots = cfg.rollout.stream_max_groups or math.ceil(round_size(cfg) / collector.engine.layout.rollout_dp_size)
    return StreamingCollector(collector, slots=slots, check_steps=cfg.rollout.stream_check_steps,
                              partial=cfg.rollout.partial, round_size=round_size(cfg))


def run_state(run: Run, step: int) -> RunState:
    """What a checkpoint keeps of the loop: the step, the sampler's position (with streaming's handed-back
    prompts), and streaming's draw counter and this rank's carried partial responses."""
    if run.stream is None:
        return RunState(step=step, sampler=run.sampler.state_dict())
    return RunState(step=step, sampler=run.sampler.state_dict(), extra={"stream": run.stream.state_dict()},
                    local=run.stream.local_state())


def load_prompt_set(cfg: Config, tokenizer, world: World, round_size: int) -> PromptSet:
    """The training prompts (data.train_files), at least one generation round of them."""
    data = read_prompt_set(cfg.data.train_files, cfg.data, tokenizer, world)
    if len(data.examples) < round_size:
        key = ("algorithm.dynamic_sampling.prompts_per_round" if round_size != cfg.data.prompts_per_step
               else "data.prompts_per_step")
        raise ConfigError(f"{key}={round_size}: only {len(data.examples)} of {len(data.examples) + data.num_dropped_long} "
                          f"prompts are at most data.max_prompt_length={cfg.data.max_prompt_length} tokens. Fix: raise "
                          f"data.max_prompt_length, add data, or lower {key}")
    return data


def round_size(cfg: Config) -> int:
    """Prompts drawn per generation round: dynamic_sampling.prompts_per_round, or data.prompts_per_step."""
    dynamic = cfg.algorithm.dynamic_sampling
    return (dynamic.enabled and dynamic.prompts_per_round) or cfg.data.prompts_per_step


def finished(cfg: Config, step: int, sampler: PromptSampler) -> bool:
    """trainer.total_steps steps, or (total_steps 0) trainer.total_epochs passes over the data: steps and
    epochs count the prompts really drawn, dynamic sampling's extra rounds included."""
    if cfg.trainer.total_steps:
        return step >= cfg.trainer.total_steps
    return sampler.epochs_completed >= cfg.trainer.total_epochs


def estimated_total_steps(cfg: Config, step: int, sampler: PromptSampler, rounds_per_step: float) -> int:
    """The progress bar's total: exact with total_steps or without dynamic sampling; otherwise an
    estimate (the rounds left for total_epochs at the mean rounds per step so far), updated every step."""
    if cfg.trainer.total_steps:
        return cfg.trainer.total_steps
    rounds_left = cfg.trainer.total_epochs * sampler.steps_per_epoch - sampler.batches_drawn
    return step + max(math.ceil(rounds_left / max(rounds_per_step, 1.0)), 0)


@contextmanager
def starting(world: World, what: str):
    """Start-up, on rank 0's console: what is starting, then how long it took."""
    if world.is_main:
        logger.info("%s ...", what)
    start = time.perf_counter()
    yield
    if world.is_main:
        logger.info("%s: done in %.1f s", what, time.perf_counter() - start)


def train(cfg: Config) -> None:
    """`golong train`: run (or resume) the whole training described by `cfg`."""
    from golong.model_check import load_tokenizer

    world = init_world()
    layout = ParallelLayout.of(world, tp=cfg.rollout.tensor_parallel_size, sp=cfg.trainer.sequence_parallel_size)
    out_dir = cfg.trainer.output_dir
    setup_console(os.path.join(out_dir, "logs"), world.rank, verbose=cfg.logging.verbose)
    checkpointer = Checkpointer.for_run(out_dir, cfg.trainer.keep_last, world)  # shared or node-local folders
    cfg.trainer.deepspeed = checkpointer.deepspeed_config(cfg.trainer.deepspeed)  # the storage option it needs
    latest = checkpointer.resume_point()  # rank 0 decides: every rank loads the same
    if latest and not cfg.trainer.resume:
        raise ConfigError(f"trainer.resume: false, but {out_dir} holds checkpoints of another run ({latest}); its "
                          "newer steps would replace this run's. Fix: set trainer.resume=true to continue it, or "
                          "choose a new trainer.output_dir")
    if world.is_main:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

    with starting(world, "loading data"):
        tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
        data = load_prompt_set(cfg, tokenizer, world, round_size(cfg))
        validator = Validator.load(cfg, tokenizer, world)  # trainer.val_every: data.val_files, loaded alike
    sampler = PromptSampler(len(data.examples), round_size(cfg), cfg.data.seed, cfg.data.shuffle)
    estimator = advantage_lib.build(cfg.algorithm.advantage.name, **cfg.algorithm.advantage.params)
    agg_mode = resolve_agg_mode(cfg.algorithm.loss, estimator.preferred_loss_agg)
    with starting(world, f"DeepSpeed ZeRO-{cfg.trainer.zero_stage}: policy {cfg.model.path}"):
        policy = PolicyEngine(cfg.model, cfg.trainer, cfg.algorithm.loss, cfg.algorithm.icepop,
                              cfg.rollout.temperature, world=world, layout=layout)
    with starting(world, f"vLLM engine (tensor parallel {cfg.rollout.tensor_parallel_size})"):
        rollout = RolloutEngine(cfg.rollout, cfg.model.path, cfg.max_model_len, world=world, layout=layout)
    configure_router_replay(policy.ds_engine.module.router_replay, cfg.rollout)  # MoE: replay or only measure routes
    torch.manual_seed(cfg.trainer.seed)  # after vLLM, which reseeds the global generators with rollout.seed
    with starting(world, f"reward pool ({cfg.reward.num_workers} workers)"):
        scorer = RewardScorer(cfg.reward)
    collector = RolloutCollector(world, rollout, scorer, tokenizer, stop_token_ids(cfg.model.path, tokenizer),
                                 data.examples, data.prompts, data.tasks)
    run = Run(cfg=cfg, world=world, layout=policy.layout, data=data, sampler=sampler, policy=policy, rollout=rollout,
              collector=collector, stream=streaming_collector(cfg, collector), estimator=estimator, agg_mode=agg_mode,
              constant_norm_length=cfg.algorithm.loss.constant_norm_length or cfg.rollout.max_response_length)
    metrics = None
    try:
        step = 0
        if latest:
            with starting(world, f"resuming from {latest}"):
                state = checkpointer.load(latest, policy.ds_engine)
                sampler.load_state_dict(state.sampler)
                step = state.step
                if run.stream is not None and "stream" in state.extra:  # the draw counter; this rank's carried groups
                    run.stream.load_state_dict(state.extra["stream"])
                    run.stream.load_local_state(state.local)
                # the engine started from model.path, not from the checkpoint; as in a step, the KV cache sleeps
                # while the gathered buckets are in flight
                rollout.sleep()
                rollout.update_weights(policy.module)

        total = estimated_total_steps(cfg, step, sampler, 1.0)
        if world.is_main and not cfg.trainer.total_steps and cfg.algorithm.dynamic_sampling.enabled:
            logger.info("trainer.total_epochs=%d with dynamic sampling: a step takes as many rounds as it needs, so "
                        "the step count (%d) is an estimate, refined as the run goes", cfg.trainer.total_epochs, total)
        metrics = MetricsLogger(out_dir, cfg.logging, to_dict(cfg), world.rank, total_steps=total, start_step=step)
        validator.begin(run, checkpointer, metrics, step)  # a fresh run validates its initial policy (step 0)
        rounds = 0  # generation rounds of this process's steps: the total's estimate
        first = step
        skipped_in_a_row = 0
        while not finished(cfg, step, sampler):
            step += 1
            timer = PhaseTimer()
            with timer.phase("step"):
                step_metrics = train_step(run, timer)
            rounds += step_metrics["sampling/rounds"]
            metrics.set_total(estimated_total_steps(cfg, step, sampler, rounds / (step - first)))
            metrics.log(step, {**step_metrics, **timer.pop(), "data/epoch": float(sampler.epoch),
                               "data/dropped_long_prompts": float(data.num_dropped_long),
                               **validator.after_step(step)})  # val/ metrics when step % trainer.val_every == 0
            skipped_in_a_row = count_skipped(cfg, world, step, step_metrics, skipped_in_a_row)
            if finished(cfg, step, sampler) or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
                checkpointer.save(policy.ds_engine, run_state(run, step))

        if cfg.trainer.export_hf:
            export_hf(policy.module, tokenizer, os.path.join(out_dir, "hf"), world=world)
    finally:
        if metrics is not None:
            metrics.close()
        for component in (policy, rollout, scorer):  # the engine first: vLLM tears down the process group
            component.close()
    if world.is_main and cfg.logging.plot:
        from golong.plot import plot_run

        logger.info("reward curves: %s", plot_run(out_dir))
