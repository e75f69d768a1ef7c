"""The rollout collector: from dataset rows to every rank's scored responses, one typed `Rollouts`.

One round (`RolloutCollector.collect`), collective under torchrun:

    rows (the same on every rank)
      -> this rank's share: rows[rollout_dp_rank::rollout_dp_size]   one vLLM engine per tensor-parallel group
      -> generate G responses per prompt                  RolloutEngine.generate
      -> keep one copy per tensor-parallel group          its first rank; the others got the same responses
      -> decode (the final stop token dropped) and score  the reward worker pool
      -> gather every rank's responses                    World.all_gather_objects
         (MoE routes stay on the rank that generated them: the gathered Rollouts hold a RouteRef each, and
         the trainer fetches only the routes of the samples it trains: RolloutCollector.fetch_routes)

A training step (`RolloutCollector.collect_step`) is one round, or with dynamic sampling (DAPO, as the
GoLongRL authors' released scripts train) as many rounds as it takes to find `target_groups` groups whose
rewards differ, bounded by `max_rounds`. Train (golong/trainer/loop.py), eval (golong/eval.py) and
calibration (golong/data/calibrate.py) all collect through here.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from golong.rewards.pool import ScoreItem

logger = logging.getLogger("golong")


@dataclass(frozen=True)
class RouteRef:
    """Where one response's MoE routes live (router replay): the rank that generated the response keeps its
    (P+L-1, layers, top_k) array, uint8 for up to 256 experts. Qwen3-30B-A3B's 48 layers x top-8 make that
    384 B per token, ~27 MB for a 70K-token response: gathered to every rank, a step's routes would take
    tens of GB on each; so only these references travel, and each array goes to the ranks that train it."""

    rank: int  # the world rank holding the array
    key: int  # its key in that rank's RolloutCollector.route_store


@dataclass
class Rollouts:
    """Scored responses in one global order (the same on every rank). N responses; the n responses of a
    prompt form one group."""

    example_index: list[int]  # (N,) the response's prompt: an index into the collector's examples
    group_index: torch.Tensor  # (N,) int64: which prompt of the step (unique across a step's rounds)
    task_index: torch.Tensor  # (N,) int64: index into RolloutCollector.tasks
    response_ids: list[np.ndarray]  # (N,) each (L_i,) int32: the sampled tokens, EOS included
    rollout_logprobs: list[np.ndarray]  # (N,) each (L_i,) float32: vLLM's processed log-probs
    truncated: np.ndarray  # (N,) bool: hit the response length limit without EOS
    rewards: torch.Tensor  # (N,) float64, as scored
    texts: list[str]  # (N,) the decoded responses as scored; [] unless the collector keeps text
    reward_timeouts: int
    reward_errors: int
    num_filtered: int  # prompts that got no responses: too long for the engine (or the caller's length limit)
    generate_seconds: float  # generation wall time: the slowest rank's, summed over rounds
    score_seconds: float  # scoring wall time: the slowest rank's, summed over rounds
    routes: list[RouteRef] | None = None  # (N,) where each response's MoE routes live (router replay), or None

    def __len__(self) -> int:
        return len(self.example_index)

    @property
    def num_groups(self) -> int:
        return len(set(self.group_index.tolist()))

    @property
    def generation_tokens_per_s(self) -> float:
        """Every rank's generated tokens over the generation wall time."""
        return sum(len(r) for r in self.response_ids) / max(self.generate_seconds, 1e-9)

    @classmethod
    def empty(cls) -> Rollouts:
        return cls(example_index=[], group_index=torch.zeros(0, dtype=torch.long),
                   task_index=torch.zeros(0, dtype=torch.long), response_ids=[], rollout_logprobs=[],
                   truncated=np.zeros(0, dtype=bool), rewards=torch.zeros(0, dtype=torch.float64), texts=[],
                   reward_timeouts=0, reward_errors=0, num_filtered=0, generate_seconds=0.0, score_seconds=0.0)

    def select(self, rows: list[int]) -> Rollouts:
        """The responses at positions `rows`, in that order (the counters are kept whole)."""
        idx = torch.tensor(rows, dtype=torch.long)
        return Rollouts(
            example_index=[self.example_index[i] for i in rows], group_index=self.group_index[idx],
            task_index=self.task_index[idx], response_ids=[self.response_ids[i] for i in rows],
            rollout_logprobs=[self.rollout_logprobs[i] for i in rows], truncated=self.truncated[rows],
            rewards=self.rewards[idx], texts=[self.texts[i] for i in rows] if self.texts else [],
            reward_timeouts=self.reward_timeouts, reward_errors=self.reward_errors, num_filtered=self.num_filtered,
            generate_seconds=self.generate_seconds, score_seconds=self.score_seconds,
            routes=[self.routes[i] for i in rows] if self.routes is not None else None)

    @staticmethod
    def concat(parts: list[Rollouts], *, parallel: bool) -> Rollouts:
        """One Rollouts of `parts` in order. parallel: the parts ran side by side (ranks: wall time is the
        slowest part's), else one after another (rounds: wall times add up)."""
        if not parts:
            return Rollouts.empty()
        wall = max if parallel else sum
        return Rollouts(
            example_index=[e for p in parts for e in p.example_index],
            group_index=torch.cat([p.group_index for p in parts]),
            task_index=torch.cat([p.task_index for p in parts]),
            response_ids=[r for p in parts for r in p.response_ids],
            rollout_logprobs=[lp for p in parts for lp in p.rollout_logprobs],
            truncated=np.concatenate([p.truncated for p in parts]),
            rewards=torch.cat([p.rewards for p in parts]),
            texts=[t for p in parts for t in p.texts],
            reward_timeouts=sum(p.reward_timeouts for p in parts),
            reward_errors=sum(p.reward_errors for p in parts),
            num_filtered=sum(p.num_filtered for p in parts),
            generate_seconds=wall(p.generate_seconds for p in parts),
            score_seconds=wall(p.score_seconds for p in parts),
            routes=_concat_routes(parts))

    def informative(self) -> Rollouts:
        """The responses of groups whose rewards are not all equal (dynamic sampling's filter): a group
        whose G rewards agree has every advantage 0 and teaches nothing."""
        groups = self.group_index
        if not len(groups):
            return self
        spread = torch.zeros(int(groups.max()) + 1, dtype=self.rewards.dtype)
        low = spread.clone().fill_(math.inf).scatter_reduce(0, groups, self.rewards, "amin")
        high = spread.clone().fill_(-math.inf).scatter_reduce(0, groups, self.rewards, "amax")
        return self.select(torch.nonzero((high > low)[groups]).flatten().tolist())

    def first_groups(self, count: int) -> Rollouts:
        """The responses of the `count` groups with the smallest group ids (the earliest drawn)."""
        chosen = set(sorted(set(self.group_index.tolist()))[:count])
        return self.select([i for i, g in enumerate(self.group_index.tolist()) if g in chosen])

    def per_example(self, num_examples: int) -> tuple[list[list[float]], list[list[str]]]:
        """(scores, texts) of each example 0 .. num_examples - 1, in sampling order; [] for one not generated."""
        scores: list[list[float]] = [[] for _ in range(num_examples)]
        texts: list[list[str]] = [[] for _ in range(num_examples)]
        for k, e in enumerate(self.example_index):
            scores[e].append(float(self.rewards[k]))
            if self.texts:
                texts[e].append(self.texts[k])
        return scores, texts


@dataclass
class StepRollouts:
    """What one training step's collection produced."""

    train: Rollouts  # the groups the step trains on
    sampled: Rollouts  # every group generated this step (reward metrics read these: not biased by the filter)
    rounds: int  # generation rounds used
    prompts_drawn: int  # prompts taken from the sampler (the data the step consumed)
    groups_informative: int  # groups whose rewards differ, before the trim to target_groups
    stream: dict[str, float] = field(default_factory=dict)  # rollout.mode=streaming's rollout/ metrics

    def metrics(self) -> dict[str, float]:
        return {"sampling/rounds": float(self.rounds), "sampling/prompts_drawn": float(self.prompts_drawn),
                "sampling/groups_informative": float(self.groups_informative),
                "sampling/groups_kept": float(self.train.num_groups), **self.stream}


def stop_token_ids(model_path: str, tokenizer) -> set[int]:
    """The tokens that end a response: the tokenizer's EOS and the model's generation_config EOS ids."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id}
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos])
    except OSError:  # no generation_config.json: the tokenizer's EOS is the only stop token
        pass
    return {i for i in ids if i is not None}


def response_text(tokenizer, ids: list[int], stop_ids: set[int]) -> str:
    """A response as the reward reads it: the final stop token dropped, special tokens such as
    `</think>` kept (the reasoning-block rules need them)."""
    if ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


class RolloutCollector:
    """Generates and scores responses for rows of a fixed list of examples (their prompts pre-tokenized).

    engine: a RolloutEngine; scorer: a RewardScorer; prompts[i] are the token ids of examples[i];
    tasks: the task names responses are indexed by (Rollouts.task_index). keep_text: also return the
    decoded responses (eval writes them; training needs only the ids).
    """

    def __init__(self, world, engine, scorer, tokenizer, stop_ids: set[int], examples: list, prompts,
                 tasks: list[str], keep_text: bool = False):
        self.world, self.engine, self.scorer = world, engine, scorer
        self.tokenizer, self.stop_ids = tokenizer, stop_ids
        self.examples, self.prompts, self.tasks = examples, prompts, tasks
        self.keep_text = keep_text
        self._task_id = {t: i for i, t in enumerate(tasks)}
        self.route_store: dict[int, np.ndarray] = {}  # this rank's responses' routes, by RouteRef.key

    def collect(self, rows: list[int], first_group: int = 0, step: int = 0, *, n: int | None = None,
                temperature: float | None = None, top_p: float | None = None,
                max_tokens: int | None = None) -> Rollouts:
        """G responses for each of `rows` (indices into examples), scored, from every rank. Collective: every
        rank passes the same rows and gets the same Rollouts. Row k's group id is first_group + k; its
        sampling seed derives from (rollout.seed, step, group id): the same on every rank (request_seeds).
        n, temperature, top_p, max_tokens: the engine's sampling settings for this call (default: the rollout
        config's; validation passes rollout.val_*)."""
        from golong.rollout.engine import request_seeds

        engine = self.engine
        layout = engine.layout  # vLLM's TP groups: one engine each, one share of the rows each
        mine = list(range(layout.rollout_dp_rank, len(rows), layout.rollout_dp_size))  # positions in `rows`
        batch = engine.generate([self.prompts[rows[p]] for p in mine],
                                seeds=request_seeds(engine.cfg.seed, step, [first_group + p for p in mine]),
                                n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        local = Rollouts.empty()
        if layout.leads_tp_group:  # its TP group's other ranks got the same responses: one copy is kept
            position = [mine[k] for k in batch.prompt_index]
            local = self.score_responses([rows[p] for p in position], [first_group + p for p in position],
                                         batch.response_ids, batch.logprobs, batch.truncated)
            local.routes = self._keep_routes(batch.routes)  # router replay: the experts vLLM chose, or None
        local.num_filtered, local.generate_seconds = (batch.num_filtered if layout.leads_tp_group else 0), batch.seconds
        return Rollouts.concat(self.world.all_gather_objects(local), parallel=True)

    def score_responses(self, rows: list[int], group_ids: list[int], response_ids: list[list[int]],
                        logprobs: list[list[float]], truncated: list[bool]) -> Rollouts:
        """Decode (final stop token dropped) and score responses, one per entry: rows[i] is response i's
        example, group_ids[i] its group. This rank's Rollouts of them; its counters other than the reward
        pool's (filtered prompts, generation time) are 0 for the caller to fill."""
        texts = [response_text(self.tokenizer, ids, self.stop_ids) for ids in response_ids]
        examples = [self.examples[row] for row in rows]
        scored = self.scorer.score([ScoreItem(ex.reward_type, text, ex.ground_truth)
                                    for ex, text in zip(examples, texts)])
        return Rollouts(
            example_index=list(rows),
            group_index=torch.tensor(group_ids, dtype=torch.long),
            task_index=torch.tensor([self._task_id[ex.task] for ex in examples], dtype=torch.long),
            response_ids=[np.asarray(r, dtype=np.int32) for r in response_ids],
            rollout_logprobs=[np.asarray(lp, dtype=np.float32) for lp in logprobs],
            truncated=np.asarray(truncated, dtype=bool).reshape(-1),
            rewards=torch.tensor(scored.scores, dtype=torch.float64).reshape(-1),
            texts=texts if self.keep_text else [],
            reward_timeouts=sum(scored.timeouts.values()), reward_errors=sum(scored.errors.values()),
            num_filtered=0, generate_seconds=0.0, score_seconds=scored.seconds)

    def _keep_routes(self, routes: list[np.ndarray] | None) -> list[RouteRef] | None:
        if routes is None:
            return None
        refs = []
        for array in routes:
            key = len(self.route_store)
            self.route_store[key] = array
            refs.append(RouteRef(rank=self.world.rank, key=key))
        return refs

    def fetch_routes(self, needed: list[list[RouteRef]]) -> list[np.ndarray]:
        """Collective: needed[r] lists the routes rank r trains on (every rank passes the same lists). Each
        array goes from the rank holding it to the ranks needing it, and nowhere else; returns this rank's
        arrays in the order of needed[rank]."""
        me = self.world.rank
        outgoing = [{ref.key: self.route_store[ref.key] for ref in refs if ref.rank == me} for refs in needed]
        incoming = self.world.exchange_objects(outgoing)
        return [incoming[ref.rank][ref.key] for ref in needed[me]]

    def collect_step(self, next_rows: Callable[[], list[int]], target_groups: int, *, filter_groups: bool,
                     max_rounds: int, step: int = 0) -> StepRollouts:
        """One training step's rollouts; `next_rows()` draws a round of prompts (PromptSampler.next_batch).
        `step` identifies the step in the sampling seeds: unique per step, the same on every rank and after
        a resume. The previous step's routes are dropped from this rank's store."""
        self.route_store.clear()
        return sample_step(lambda first_group: self._round(next_rows, first_group, step), target_groups,
                           filter_groups=filter_groups, max_rounds=max_rounds)

    def _round(self, next_rows: Callable[[], list[int]], first_group: int, step: int) -> tuple[Rollouts, int]:
        rows = next_rows()
        return self.collect(rows, first_group, step), len(rows)


def _concat_routes(parts: list[Rollouts]) -> list[RouteRef] | None:
    """The parts' routes in order; None when no part with responses has any (router replay off)."""
    with_rows = [p for p in parts if len(p)]
    if all(p.routes is None for p in with_rows):
        return None
    if any(p.routes is None for p in with_rows):
        raise RuntimeError("router replay: some ranks returned routes and some did not")
    return [r for p in with_rows for r in p.routes]


def sample_step(next_round: Callable[[int], tuple[Rollouts, int]], target_groups: int, *, filter_groups: bool,
                max_rounds: int) -> StepRollouts:
    """A step's groups from rounds of generation. `next_round(first_group)` draws, generates and scores one
    round, numbering its groups from first_group, and returns (its Rollouts, prompts drawn).

    Without filter_groups: one round, trained on whole. With it (dynamic sampling, DAPO): groups whose
    rewards all agree are dropped and rounds repeat until `target_groups` informative groups exist or
    `max_rounds` rounds are done; the step trains on the first `target_groups` of them in drawing order, or,
    when the bound is hit first, on the fewer there are (with a warning).
    """
    rollouts, drawn = next_round(0)
    if not filter_groups:
        return StepRollouts(train=rollouts, sampled=rollouts, rounds=1, prompts_drawn=drawn,
                            groups_informative=rollouts.informative().num_groups)
    sampled, kept, rounds = [rollouts], [rollouts.informative()], 1
    while sum(k.num_groups for k in kept) < target_groups and rounds < max_rounds:
        rollouts, more = next_round(drawn)
        drawn += more
        rounds += 1
        sampled.append(rollouts)
        kept.append(rollouts.informative())
    informative = Rollouts.concat(kept, parallel=False)
    if informative.num_groups < target_groups:
        logger.warning("dynamic sampling: %d of %d groups with differing rewards after %d rounds "
                       "(algorithm.dynamic_sampling.max_rounds=%d, %d prompts drawn); training on those",
                       informative.num_groups, target_groups, rounds, max_rounds, drawn)
    return StepRollouts(train=informative.first_groups(target_groups), sampled=Rollouts.concat(sampled, parallel=False),
                        rounds=rounds, prompts_drawn=drawn, groups_informative=informative.num_groups)


def collect_for_examples(examples: list, model_path: str, rollout_cfg, reward_cfg, data_cfg, world,
                         model_key: str = "model.path") -> Rollouts:
    """rollout_cfg.n responses for each of `examples` from the model at `model_path`, scored, decoded text
    kept; examples whose prompt exceeds data_cfg.max_prompt_length are not generated (counted in
    num_filtered). Starts and closes its own engine and reward pool (eval and calibration). `model_key`: the
    option that named the model (`--model`), in the error of a model that does not load.
    Collective under torchrun: every rank passes the same examples and gets every response."""
    from golong.data.prompts import encode_prompts
    from golong.model_check import load_tokenizer
    from golong.rewards import RewardScorer
    from golong.rollout.engine import RolloutEngine

    tokenizer = load_tokenizer(model_path, model_key)
    prompts = encode_prompts(examples, tokenizer, data_cfg)
    fits = [i for i, n in enumerate(prompts.lengths) if n <= data_cfg.max_prompt_length]
    longest = max((int(prompts.lengths[i]) for i in fits), default=1)
    engine = RolloutEngine(rollout_cfg, model_path, max_model_len=longest + rollout_cfg.max_response_length,
                           world=world)
    scorer = RewardScorer(reward_cfg)
    try:
        collector = RolloutCollector(world, engine, scorer, tokenizer, stop_token_ids(model_path, tokenizer),
                                     examples, prompts, sorted({e.task for e in examples}), keep_text=True)
        # Gathered before closing: vLLM's shutdown destroys the process group (RolloutEngine.close).
        rollouts = collector.collect(fits)
    finally:
        scorer.close()
        engine.close()
    rollouts.num_filtered += len(examples) - len(fits)
    return rollouts
