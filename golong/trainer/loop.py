"""The GoLongRL training loop. One step is the algorithm of paper section 4, top to bottom:

    1. prompts      a uniform batch of dataset rows (Eq. 4)                      golong/data
    2. rollouts     G responses per prompt from the current policy (vLLM)        golong/rollout
    3. rewards      one verifiable score per response                            golong/rewards
    4. advantages   over the whole batch: GRPO | Dr.GRPO | TMN-Reweight | yours   golong/advantage
    5. pack         this rank's share of responses into token-budget micro-batches
    6. old log-probs under the policy that sampled (and IcePop's view of the mismatch)
    7. update       ppo_epochs x (forward/backward per micro-batch, optimizer step)
    8. sync         the new weights into the vLLM engine

Every rank runs the same loop (torchrun); each rank's vLLM engine generates for its share of the
prompts, then every rank sees every response (`gather_rollouts`), so advantages use whole-batch task
statistics and micro-batches are balanced over all ranks.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import yaml

from golong import advantage as advantage_lib
from golong.config import Config
from golong.configlib import ConfigError, to_dict
from golong.data.loader import load_examples
from golong.data.prompts import PromptIds, encode_prompts, filter_long_prompts
from golong.data.sampler import PromptSampler
from golong.data.schema import Example
from golong.eval import response_text, stop_token_ids
from golong.rewards import RewardScorer, ScoreItem
from golong.rollout import RolloutEngine, logprob_abs_diff
from golong.trainer.batch import TrainSample, pack
from golong.trainer.checkpoint import Checkpointer, RunState
from golong.trainer.distributed import World, all_gather_objects, init_world
from golong.trainer.engine import PolicyEngine
from golong.trainer.export import export_hf
from golong.trainer.loss import LossDenominator, PolicyLossStats, all_reduce_sum, resolve_agg_mode
from golong.trainer.metrics import MetricsLogger, PhaseTimer
from golong.trainer.packing import plan_micro_batches
from golong.trainer.router_replay import configure_router_replay, gather_routes, router_metrics

logger = logging.getLogger("golong")


@dataclass
class PromptSet:
    """The training prompts, loaded, templated and length-filtered once before the first step."""

    examples: list[Example]
    prompts: PromptIds  # prompts[i] are the token ids of examples[i]
    tasks: list[str]  # the task names present, sorted; a response's task id indexes this list
    num_dropped_long: int  # longer than data.max_prompt_length
    num_bad_rows: int  # skipped by data.on_bad_row=skip


@dataclass
class Rollouts:
    """One step's scored responses from every rank, in one global order (N responses)."""

    example_index: list[int]  # (N,) dataset row of each response's prompt
    group_index: torch.Tensor  # (N,) int64: which prompt of the step (a group shares one prompt)
    task_index: torch.Tensor  # (N,) int64: index into PromptSet.tasks
    response_ids: list[np.ndarray]  # (N,) each (L_i,) int32: the sampled tokens, EOS included
    rollout_logprobs: list[np.ndarray]  # (N,) each (L_i,) float32: vLLM's processed log-probs
    truncated: np.ndarray  # (N,) bool: hit max_response_length without EOS
    rewards: torch.Tensor  # (N,) float64, as scored
    reward_timeouts: int
    reward_errors: int
    num_filtered: int  # prompts the engine refused: prompt + max_response_length > max_model_len
    generation_tokens_per_s: float  # all ranks' generated tokens over the slowest rank's generate time
    routes: list[np.ndarray] | None = None  # (N,) each (P+L_i-1, layers, top_k) MoE experts (router replay), or None

    def __len__(self) -> int:
        return len(self.example_index)

    def select(self, rows: list[int]) -> Rollouts:
        idx = torch.tensor(rows, dtype=torch.long)
        return Rollouts([self.example_index[i] for i in rows], self.group_index[idx], self.task_index[idx],
                        [self.response_ids[i] for i in rows], [self.rollout_logprobs[i] for i in rows],
                        self.truncated[rows], self.rewards[idx], self.reward_timeouts, self.reward_errors,
                        self.num_filtered, self.generation_tokens_per_s,
                        [self.routes[i] for i in rows] if self.routes is not None else None)  # router replay


@dataclass
class Run:
    """Everything a step touches: the config, the components, and the loop's own state."""

    cfg: Config
    world: World
    tokenizer: object
    stop_ids: set[int]  # end-of-response tokens, dropped before scoring
    data: PromptSet
    sampler: PromptSampler
    policy: PolicyEngine
    rollout: RolloutEngine
    scorer: RewardScorer
    estimator: advantage_lib.AdvantageEstimator
    agg_mode: str  # resolved loss aggregation (Eq. 3 / Eq. 4)
    constant_norm_length: int  # Dr.GRPO's L (Eq. 3), used by agg_mode constant-norm
    next_group: int = 0  # group ids stay unique across dynamic-sampling rounds


# ------------------------------------------------------------------------------------------------
# One training step


def train_step(run: Run, timer: PhaseTimer) -> dict[str, float]:
    cfg, world, policy = run.cfg, run.world, run.policy

    # 1-3. prompts -> G responses each -> rewards (refilled when dynamic sampling drops groups)
    rollouts, sampled = collect_rollouts(run, timer)
    if not len(rollouts):  # every prompt filtered, or (dynamic sampling) no group with differing rewards
        logger.warning("step with nothing to train on (%d responses sampled): no update", len(sampled))
        return {"batch/responses": 0.0, **(reward_metrics(run, sampled) if len(sampled) else {})}
    run.rollout.sleep()  # CUDA: free the engine's memory for training (a no-op on CPU)

    # 4. advantages over the whole batch (every rank computes the same)
    with timer.phase("advantage"):
        advantages = run.estimator(rollouts.rewards, rollouts.group_index, rollouts.task_index)

    # 5. this rank's share, packed into micro-batches of at most micro_batch_max_tokens
    samples = to_train_samples(run, rollouts, advantages)
    plan = plan_micro_batches([s.num_tokens for s in samples], cfg.trainer.micro_batch_max_tokens, world.size)
    my_samples = [samples[i] for indices in plan[world.rank] for i in indices]
    micro_batches = [pack([samples[i] for i in indices]) for indices in plan[world.rank]]

    # 6. old log-probs: the trainer's view of the policy that sampled (and the reference's, for KL)
    with timer.phase("old_logprobs"):
        for mb in micro_batches:
            mb.old_logprobs = policy.old_logprobs(mb)
            if cfg.algorithm.loss.kl_coef:
                mb.ref_logprobs = policy.ref_logprobs(mb)
    replay_metrics = router_metrics(policy.ds_engine.module.router_replay)  # router replay: on the old-log-prob forwards

    # 7. update: the step's loss denominator is fixed once, over all micro-batches and ranks
    denom = LossDenominator.build(my_samples, run.agg_mode, run.constant_norm_length)
    loss_stats = PolicyLossStats()  # summed over the epochs' micro-batches
    with timer.phase("update"):
        for _ in range(cfg.algorithm.ppo_epochs):
            for mb in micro_batches:
                loss_stats = loss_stats + policy.forward_backward(mb, denom)
            step_stats = policy.optimizer_step()

    # 8. weight sync into vLLM (on CUDA: weights woken first, the KV cache only after the sync)
    with timer.phase("sync"):
        run.rollout.wake_up_weights()
        sync = run.rollout.sync_weights(policy.module)
        run.rollout.wake_up_kv_cache()

    return {
        **reward_metrics(run, sampled),
        "batch/trained_prompts": float(len(set(rollouts.group_index.tolist()))),
        "batch/trained_responses": float(len(rollouts)),
        **run.estimator.last_stats.as_metrics(dict(enumerate(run.data.tasks))),
        **{f"actor/{k}": v for k, v in loss_stats.all_reduce().metrics().items()},
        **{f"actor/{k}": float(v) for k, v in asdict(step_stats).items()},
        "rollout/logprob_abs_diff": step_logprob_abs_diff(micro_batches),
        **replay_metrics,
        "sync/seconds": sync.seconds,
        "sync/peak_extra_mb": sync.peak_extra_bytes / 2**20,
    }


def collect_rollouts(run: Run, timer: PhaseTimer) -> tuple[Rollouts, Rollouts]:
    """(groups to train on, every group sampled). With dynamic sampling (DAPO), groups whose rewards
    all agree carry no learning signal: they are dropped and the batch is refilled with new prompts,
    for at most max_refill_rounds extra rounds, then trimmed to data.prompts_per_step groups. The
    reward metrics read every sampled group, so they are not biased by the filter."""
    cfg = run.cfg
    sampled = generate_round(run, timer)
    if not cfg.algorithm.dynamic_sampling:
        return sampled, sampled
    kept = informative_groups(sampled)
    for _ in range(cfg.algorithm.max_refill_rounds):
        if len(set(kept.group_index.tolist())) >= cfg.data.prompts_per_step:
            break
        more = generate_round(run, timer)
        sampled = concat_rollouts(sampled, more)
        kept = concat_rollouts(kept, informative_groups(more))
    chosen = set(sorted(set(kept.group_index.tolist()))[: cfg.data.prompts_per_step])
    return kept.select([i for i, g in enumerate(kept.group_index.tolist()) if g in chosen]), sampled


@dataclass
class RankRollouts:
    """What one rank contributes to a round of generation (nothing on non-leading tensor-parallel ranks,
    whose engine returned the same responses as their group's first rank). n responses."""

    position: list[int] = field(default_factory=list)  # (n,) position of each response's prompt in the round's rows
    response_ids: list[np.ndarray] = field(default_factory=list)  # (n,) each (L_i,) int32
    logprobs: list[np.ndarray] = field(default_factory=list)  # (n,) each (L_i,) float32
    truncated: list[bool] = field(default_factory=list)  # (n,)
    rewards: list[float] = field(default_factory=list)  # (n,)
    timeouts: int = 0
    errors: int = 0
    filtered: int = 0  # prompts the engine refused
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    routes: list[np.ndarray] | None = None  # (n,) router replay: each (P+L_i-1, layers, top_k)


def generate_round(run: Run, timer: PhaseTimer) -> Rollouts:
    """One batch of prompts from the sampler, generated and scored; group ids stay unique across rounds."""
    rows = run.sampler.next_batch()
    rollouts = generate_and_score(run, rows, timer)
    run.next_group += len(rows)
    return rollouts


def generate_and_score(run: Run, rows: list[int], timer: PhaseTimer) -> Rollouts:
    """Generate G responses for this rank's share of `rows`, score them, and gather every rank's."""
    rollout, data = run.rollout, run.data
    mine = list(range(rollout.dp_rank, len(rows), rollout.dp_size))  # positions in `rows`
    with timer.phase("rollout"):
        batch = rollout.generate([data.prompts[rows[p]] for p in mine])
    local = RankRollouts()
    if run.world.rank % run.cfg.rollout.tensor_parallel_size == 0:  # the first rank of its TP group
        with timer.phase("reward"):
            examples = [data.examples[rows[mine[k]]] for k in batch.prompt_index]
            scored = run.scorer.score([
                ScoreItem(ex.reward_type, response_text(run.tokenizer, ids, run.stop_ids), ex.ground_truth)
                for ex, ids in zip(examples, batch.response_ids)])
        local = RankRollouts(
            position=[mine[k] for k in batch.prompt_index],
            response_ids=[np.asarray(r, dtype=np.int32) for r in batch.response_ids],
            logprobs=[np.asarray(lp, dtype=np.float32) for lp in batch.logprobs],
            truncated=list(batch.truncated), rewards=list(scored.scores),
            timeouts=sum(scored.timeouts.values()), errors=sum(scored.errors.values()),
            filtered=batch.num_filtered, generated_tokens=batch.num_tokens, generate_seconds=batch.seconds,
            routes=batch.routes)
    parts = all_gather_objects(local, run.world)

    position = [p for part in parts for p in part.position]
    task_of = {t: i for i, t in enumerate(data.tasks)}
    return Rollouts(
        example_index=[rows[p] for p in position],
        group_index=torch.tensor([run.next_group + p for p in position], dtype=torch.long),
        task_index=torch.tensor([task_of[data.examples[rows[p]].task] for p in position], dtype=torch.long),
        response_ids=[r for part in parts for r in part.response_ids],
        rollout_logprobs=[lp for part in parts for lp in part.logprobs],
        truncated=np.array([t for part in parts for t in part.truncated], dtype=bool),
        rewards=torch.tensor([r for part in parts for r in part.rewards], dtype=torch.float64),
        reward_timeouts=sum(part.timeouts for part in parts),
        reward_errors=sum(part.errors for part in parts),
        num_filtered=sum(part.filtered for part in parts),
        generation_tokens_per_s=(sum(part.generated_tokens for part in parts)
                                 / max(max(part.generate_seconds for part in parts), 1e-9)),
        routes=gather_routes([part.routes for part in parts], [len(part.position) for part in parts]),  # router replay
    )


def informative_groups(rollouts: Rollouts) -> Rollouts:
    """The responses of groups whose rewards are not all equal (dynamic sampling's filter)."""
    groups = rollouts.group_index
    spread = torch.zeros(int(groups.max()) + 1 if len(groups) else 0, dtype=rollouts.rewards.dtype)
    low = spread.clone().fill_(math.inf).scatter_reduce(0, groups, rollouts.rewards, "amin")
    high = spread.clone().fill_(-math.inf).scatter_reduce(0, groups, rollouts.rewards, "amax")
    keep = (high > low)[groups]
    return rollouts.select(torch.nonzero(keep).flatten().tolist())


def concat_rollouts(a: Rollouts, b: Rollouts) -> Rollouts:
    return Rollouts(a.example_index + b.example_index, torch.cat([a.group_index, b.group_index]),
                    torch.cat([a.task_index, b.task_index]), a.response_ids + b.response_ids,
                    a.rollout_logprobs + b.rollout_logprobs, np.concatenate([a.truncated, b.truncated]),
                    torch.cat([a.rewards, b.rewards]), a.reward_timeouts + b.reward_timeouts,
                    a.reward_errors + b.reward_errors, a.num_filtered + b.num_filtered,
                    min(a.generation_tokens_per_s, b.generation_tokens_per_s),
                    a.routes + b.routes if a.routes is not None and b.routes is not None else None)  # router replay


def to_train_samples(run: Run, rollouts: Rollouts, advantages: torch.Tensor) -> list[TrainSample]:
    """One TrainSample per response: exactly the sampled token ids (never decoded and re-encoded)."""
    overlong_mask = run.cfg.rollout.overlong_mask
    return [
        TrainSample(
            prompt_ids=run.data.prompts[row],
            response_ids=rollouts.response_ids[i].tolist(),
            advantage=float(advantages[i]),
            rollout_logprobs=torch.from_numpy(rollouts.rollout_logprobs[i]),
            loss_weight=0.0 if overlong_mask and rollouts.truncated[i] else 1.0,
            routes=torch.from_numpy(rollouts.routes[i]) if rollouts.routes is not None else None,  # router replay
        )
        for i, row in enumerate(rollouts.example_index)
    ]


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
        "batch/prompts": float(len(set(rollouts.group_index.tolist()))),
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


def step_logprob_abs_diff(micro_batches) -> float:
    """rollout/logprob_abs_diff over every rank's response tokens of the step."""
    real = [mb for mb in micro_batches if mb.num_real_tokens]
    count = sum(mb.labels.numel() for mb in real)
    local = logprob_abs_diff(torch.cat([mb.old_logprobs.cpu() for mb in real]),
                             torch.cat([mb.rollout_logprobs for mb in real])) if real else 0.0
    total, count = all_reduce_sum([local * count, count])
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------
# Setup and the outer loop


def load_prompt_set(cfg: Config, tokenizer, world: World) -> PromptSet:
    """Load and check every row, template and tokenize the prompts, drop the overlong ones."""
    loaded = load_examples(cfg.data.train_files, cfg.data)
    prompts = encode_prompts(loaded.examples, tokenizer, cfg.data)
    kept = filter_long_prompts(loaded.examples, prompts, cfg.data.max_prompt_length)
    if world.is_main:
        logger.info("data: %d prompts (%s); %d longer than data.max_prompt_length=%d dropped; %d bad rows skipped",
                    len(kept.examples), loaded.task_counts(), kept.num_dropped, cfg.data.max_prompt_length,
                    loaded.num_bad_rows_skipped)
    if len(kept.examples) < cfg.data.prompts_per_step:
        raise ConfigError(f"data.prompts_per_step={cfg.data.prompts_per_step}: only {len(kept.examples)} of "
                          f"{len(loaded.examples)} prompts are at most data.max_prompt_length="
                          f"{cfg.data.max_prompt_length} tokens. Fix: raise data.max_prompt_length, add data, "
                          f"or lower data.prompts_per_step")
    return PromptSet(kept.examples, kept.prompts, sorted({e.task for e in kept.examples}), kept.num_dropped,
                     loaded.num_bad_rows_skipped)


def train(cfg: Config) -> None:
    """`golong train`: run (or resume) the whole training described by `cfg`."""
    from transformers import AutoTokenizer

    logging.basicConfig(level=logging.INFO, format="[golong] %(message)s")
    world = init_world()
    out_dir = cfg.trainer.output_dir
    checkpointer = Checkpointer(out_dir, cfg.trainer.keep_last)
    latest = all_gather_objects(checkpointer.latest(), world)[0]  # rank 0 decides: every rank loads the same
    if latest and not cfg.trainer.resume:
        raise ConfigError(f"trainer.resume: false, but {out_dir} holds checkpoints of another run ({latest}); its "
                          "newer steps would replace this run's. Fix: set trainer.resume=true to continue it, or "
                          "choose a new trainer.output_dir")
    if world.is_main:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    data = load_prompt_set(cfg, tokenizer, world)
    sampler = PromptSampler(len(data.examples), cfg.data.prompts_per_step, cfg.data.seed, cfg.data.shuffle)
    total_steps = cfg.trainer.total_steps or cfg.trainer.total_epochs * sampler.steps_per_epoch
    estimator = advantage_lib.build(cfg.algorithm.advantage.name, **cfg.algorithm.advantage.params)
    agg_mode = resolve_agg_mode(cfg.algorithm.loss, estimator.preferred_loss_agg)
    policy = PolicyEngine(cfg.model, cfg.trainer, cfg.algorithm.loss, cfg.algorithm.icepop, cfg.rollout.temperature)
    rollout = RolloutEngine(cfg.rollout, cfg.model.path, cfg.max_model_len)
    configure_router_replay(policy.ds_engine.module.router_replay, cfg.rollout)  # router replay
    torch.manual_seed(cfg.trainer.seed)  # after vLLM, which reseeds the global generators with rollout.seed
    run = Run(cfg=cfg, world=world, tokenizer=tokenizer, stop_ids=stop_token_ids(cfg.model.path, tokenizer),
              data=data, sampler=sampler, policy=policy, rollout=rollout, scorer=RewardScorer(cfg.reward),
              estimator=estimator, agg_mode=agg_mode,
              constant_norm_length=cfg.algorithm.loss.constant_norm_length or cfg.rollout.max_response_length)
    metrics = None
    try:
        start = 0
        if latest:
            state = checkpointer.load(latest, policy.ds_engine)
            sampler.load_state_dict(state.sampler)
            run.next_group = state.extra.get("next_group", 0)
            start = state.step
            logger.info("resuming from %s: step %d of %d", latest, start, total_steps)
            rollout.sync_weights(policy.module)  # the engine started from model.path, not from the checkpoint

        metrics = MetricsLogger(out_dir, cfg.logging, to_dict(cfg), world.rank, total_steps=total_steps,
                                start_step=start)
        for step in range(start + 1, total_steps + 1):
            timer = PhaseTimer()
            with timer.phase("step"):
                step_metrics = train_step(run, timer)
            metrics.log(step, {**step_metrics, **timer.pop(), "data/epoch": float(sampler.epoch),
                               "data/dropped_long_prompts": float(data.num_dropped_long)})
            if step == total_steps or (cfg.trainer.save_every and step % cfg.trainer.save_every == 0):
                checkpointer.save(policy.ds_engine, RunState(step, sampler.state_dict(), {"next_group": run.next_group}))

        if cfg.trainer.export_hf:
            export_hf(policy.module, tokenizer, os.path.join(out_dir, "hf"))
    finally:
        if metrics is not None:
            metrics.close()
        for component in (policy, rollout, run.scorer):  # the engine first: vLLM tears down the process group
            component.close()
    if world.is_main and cfg.logging.plot:
        from golong.plot import plot_run

        logger.info("reward curves: %s", plot_run(out_dir))


def export_checkpoint(run_dir: str, out: str | None = None) -> str:
    """`golong export`: an HF model folder from a run's latest checkpoint (consolidated with
    DeepSpeed's zero_to_fp32, so no engine or accelerator is needed)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from golong.config import load_config

    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    latest = Checkpointer(run_dir, cfg.trainer.keep_last).latest(clean_up=False)  # the run may still be saving
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint under {run_dir}/checkpoints")
    root, tag = os.path.split(latest)
    # The engine trained LogProbModel(model): its parameter names carry the wrapper's "model." prefix.
    state_dict = {name.removeprefix("model."): tensor
                  for name, tensor in get_fp32_state_dict_from_zero_checkpoint(root, tag=tag).items()}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    loaded = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()  # shares embed_tokens' tensor
    if set(loaded.missing_keys) - tied or loaded.unexpected_keys:
        raise RuntimeError(f"checkpoint {latest} does not match {cfg.model.path}: missing "
                           f"{sorted(set(loaded.missing_keys) - tied)[:5]}, unexpected {loaded.unexpected_keys[:5]}")
    out = out or os.path.join(run_dir, "hf")
    export_hf(model, AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code), out)
    return out
