"""Streaming rollouts (rollout.mode=streaming): the engine stays busy through the long tail.

A synchronous round waits for its longest response while the batch thins out. Here every engine keeps
`slots` groups' worth of responses generating (slots x G requests: a group whose other responses are done
holds only its unfinished ones), one vLLM request per response (n=1, seeded so that response j of a
group samples exactly what vLLM's parallel sampling gives child j: seed + j), driven through vLLM's own
engine step loop (`RolloutEngine.add_request` / `step_requests` / `abort_requests`). One step:

    carried groups continue          partial=true: the responses left unfinished last step, resubmitted as
                                     prompt + tokens so far (their old tokens keep their old log-probs)
    repeat every stream_check_steps engine steps, a check (collective, the same decision on every rank):
        score the groups whose G responses finished since the last check   (the reward pool)
        all-gather per engine: groups kept so far, free slots, busy         (a few ints per rank)
        stop once `target_groups` groups are kept (informative ones with dynamic sampling, else any),
             or nothing is generating and the step's prompt budget is spent
        else refill every free slot: the sampler's next prompts, dealt to the engines in rank order
    at the stop:
        gather every engine's finished groups; order them by (check, engine, finish order); train on
        the first target_groups kept ones (the rest are this step's `sampled` groups, as in sync mode)
        partial=false: abort what is still generating; its prompts, and the kept groups beyond the
             target, go back first in the sampler (saved in checkpoints: nothing lost, nothing repeated)
        partial=true:  abort in vLLM but keep the tokens and log-probs; continue after the weight sync

Every decision is made from gathered counts at checks, which fall every stream_check_steps engine steps
(never on wall-clock time), so a run is reproducible and a resumed run equals an uninterrupted one.
What streaming changes from the paper's setting (README, 'Streaming rollouts'): the step's groups are
the first to finish, so with partial=false long responses are trained less often (measured:
response_length/trained_vs_sampled), and with partial=true a response may span policies (measured:
rollout/policy_lag_max; IcePop compares each token with the log-prob it was sampled with).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from golong.rollout.collect import Rollouts, StepRollouts

logger = logging.getLogger("golong")


def stream_seed(seed: int, draw: int, response: int, segment: int) -> int:
    """The sampling seed of one request: response `response` of the group drawn `draw`-th in the run,
    its `segment`-th start (0: from the prompt; k > 0: the k-th continuation of a partial response).
    Segment 0 is base + response, base a pure function of (rollout.seed, draw): exactly the seed vLLM's
    parallel sampling gives child `response` of a request seeded with base, so a streaming group samples
    what `RolloutEngine.generate([prompt], seeds=[base])` samples. 62 bits, as `request_seeds`."""
    def digest(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 2

    if segment == 0:
        return group_base_seed(seed, draw) + response
    return digest(f"golong-stream:{seed}:{draw}:{response}:{segment}")


def group_base_seed(seed: int, draw: int) -> int:
    """The seed of the group drawn `draw`-th: its response j samples with seed base + j."""
    return int.from_bytes(hashlib.blake2b(f"golong-stream:{seed}:{draw}".encode(), digest_size=8).digest(),
                          "little") >> 2


@dataclass
class StreamResponse:
    """One response, generating or done. JSON-able (checkpoints keep carried ones)."""

    tokens: list[int] = field(default_factory=list)  # (L,) sampled so far
    logprobs: list[float] = field(default_factory=list)  # (L,) each token's rollout log-prob, from the policy that sampled it
    versions: list[int] = field(default_factory=list)  # the policy version (step) of each segment, in order
    finished: bool = False
    truncated: bool = False  # stopped by max_response_length


@dataclass
class StreamGroup:
    """The G responses of one drawn prompt."""

    draw: int  # run-wide draw number: names its requests and seeds them
    row: int  # its example (index into the collector's examples)
    responses: list[StreamResponse]

    @property
    def done(self) -> bool:
        return all(r.finished for r in self.responses)

    def request_id(self, j: int) -> str:
        return f"golong-{self.draw}-{j}-{len(self.responses[j].versions) - 1}"


@dataclass
class _Finished:
    """A group finished and scored on this rank, waiting for the step's end."""

    check: int  # the check that reported it
    order: int  # its finish order on this engine
    group: StreamGroup
    rollouts: Rollouts  # its G responses, scored (group_index: its draw number); empty off the TP group's lead


class StreamingCollector:
    """One engine's streaming state across steps (every rank has one; the ranks of a tensor-parallel group
    hold the same). `collector` is the RolloutCollector whose engine, scorer and examples it uses."""

    def __init__(self, collector, slots: int, check_steps: int, partial: bool, round_size: int = 0):
        self.collector, self.engine, self.world = collector, collector.engine, collector.world
        self.cfg = self.engine.cfg
        self.slots, self.check_steps, self.partial = slots, check_steps, partial
        self.round_size = round_size or slots * self.engine.layout.rollout_dp_size  # sampling/rounds: prompts drawn / this
        self.next_draw = 0  # draws so far in the run (the same on every rank)
        self.version = 0  # steps collected so far: the policy version of the responses generating now
        self.carried: list[StreamGroup] = []  # partial=true: groups left for the next step, oldest first
        self.last_draws: list[int] = []  # the last step's groups' draw numbers, by group number
        self._routes: dict[tuple[int, int], object] = {}  # router replay: (draw, response) -> its routes, until scored

    # ------------------------------------------------------------------------------------------
    # One step

    def collect_step(self, sampler, target_groups: int, *, filter_groups: bool, max_prompts: int) -> StepRollouts:
        """The step's groups; collective. `max_prompts`: new prompts this step may draw (0: no limit); with
        dynamic sampling the bound that keeps a step from spinning forever on groups that never become
        informative. Responses are tagged with the policy version generating them: the steps collected
        so far, this one included."""
        layout, engine, world = self.engine.layout, self.engine, self.world
        self.version += 1
        version = self.version
        start = time.perf_counter()
        self.collector.route_store.clear()  # router replay: the last step's routes (as collect_step does)
        engine.routes.stream_drop()
        self._routes = {}
        active: list[StreamGroup] = []
        for group in self.carried:  # partial responses continue under the new policy
            active.append(group)
            for j, response in enumerate(group.responses):
                if not response.finished:
                    self._submit(group, j, version)
        self.carried = []
        finished: list[_Finished] = []
        kept_so_far, drawn, filtered, check, order, score_seconds = 0, 0, 0, 0, 0, 0.0
        by_id = {group.request_id(j): (group, j) for group in active for j in range(len(group.responses))}
        while True:
            # a check: score what finished since the last one, count, and decide (the same on every rank)
            done = [g for g in active if g.done]
            active = [g for g in active if not g.done]
            scored = self._score(done, check, order)
            order += len(done)
            finished += scored
            score_seconds += sum(f.rollouts.score_seconds for f in scored)
            kept_here = sum(1 for f in scored if self._kept(f.rollouts, filter_groups))
            counts = world.all_gather_objects((layout.rollout_dp_rank, layout.leads_tp_group, kept_here,
                                               self._free_slots(active), bool(active)))
            leads = [c for c in counts if c[1]]  # one entry per engine
            kept_so_far += sum(c[2] for c in leads)
            busy = any(c[4] for c in leads)
            budget = math.inf if not max_prompts else max_prompts - drawn
            if kept_so_far >= target_groups or (not busy and budget <= 0):
                break
            free = [(c[0], c[3]) for c in sorted(leads)]
            wanted = sum(f for _, f in free)
            take = int(min(wanted, budget))
            rows = sampler.take(take) if take else []
            drawn += take
            offset = 0
            for engine_rank, count in free:  # dealt in engine order: engine k takes the next `count` rows
                share = rows[offset:offset + count]
                draws = range(self.next_draw + offset, self.next_draw + offset + len(share))
                offset += len(share)
                if engine_rank != layout.rollout_dp_rank:
                    continue
                for row, draw in zip(share, draws):
                    prompt = self.collector.prompts[row]
                    if len(prompt) + self.cfg.max_response_length > engine.max_model_len:
                        filtered += 1  # as generate's filter: it could never get a full-length answer
                        continue
                    group = StreamGroup(draw=draw, row=row,
                                        responses=[StreamResponse() for _ in range(self.cfg.n)])
                    active.append(group)
                    for j in range(self.cfg.n):
                        self._submit(group, j, version)
                        by_id[group.request_id(j)] = (group, j)
            self.next_draw += take
            for _ in range(self.check_steps):  # the engine's own step loop
                if not engine.has_unfinished_requests():
                    break
                for delta in engine.step_requests():
                    group, j = by_id[delta.request_id]
                    response = group.responses[j]
                    response.tokens += delta.token_ids
                    response.logprobs += delta.logprobs
                    if delta.finished:
                        response.finished, response.truncated = True, delta.truncated
                        if engine.routes.enabled:  # router replay (partial=false: one request per response)
                            self._routes[group.draw, j] = engine.routes.stream_routes(
                                delta.request_id, [*self.collector.prompts[group.row], *response.tokens],
                                delta.routed_experts)
            check += 1

        # the stop: whatever is still generating is aborted in vLLM
        engine.abort_requests([g.request_id(j) for g in active for j, r in enumerate(g.responses) if not r.finished])
        seconds = time.perf_counter() - start - score_seconds
        return self._finish(finished, active, target_groups, filter_groups, version, drawn, filtered, seconds,
                            score_seconds, check + 1, sampler)

    def _free_slots(self, active: list[StreamGroup]) -> int:
        """New groups this engine can take: its capacity is slots x G requests generating at once, and a group
        holds only its unfinished responses (a long response's finished siblings wait in host memory)."""
        generating = sum(1 for g in active for r in g.responses if not r.finished)
        return max(self.slots * self.cfg.n - generating, 0) // self.cfg.n

    def _submit(self, group: StreamGroup, j: int, version: int) -> None:
        response = group.responses[j]
        if not response.tokens:  # nothing sampled yet (queued when the last step stopped): a fresh start
            response.versions = []
        segment = len(response.versions)
        response.versions.append(version)
        self.engine.add_request(group.request_id(j), [*self.collector.prompts[group.row], *response.tokens],
                                seed=stream_seed(self.cfg.seed, group.draw, j, segment),
                                max_tokens=self.cfg.max_response_length - len(response.tokens))

    def _score(self, groups: list[StreamGroup], check: int, order: int) -> list[_Finished]:
        """Score finished groups (one reward-pool call); only the lead of a tensor-parallel group scores,
        the others keep empty Rollouts (the lead's copy is the one gathered)."""
        if not groups:
            return []
        if not self.engine.layout.leads_tp_group:
            return [_Finished(check, order + k, g, Rollouts.empty()) for k, g in enumerate(groups)]
        responses = [(g, r) for g in groups for r in g.responses]
        scored = self.collector.score_responses([g.row for g, _ in responses], [g.draw for g, _ in responses],
                                                [r.tokens for _, r in responses], [r.logprobs for _, r in responses],
                                                [r.truncated for _, r in responses])
        if self.engine.routes.enabled:  # the arrays stay on this rank; the trainer fetches what it trains
            scored.routes = self.collector._keep_routes([self._routes.pop((g.draw, j)) for g in groups
                                                         for j in range(len(g.responses))])
        n = self.cfg.n
        parts = [scored.select(list(range(k * n, (k + 1) * n))) for k in range(len(groups))]
        for part in parts:  # the pool's counters belong to the whole call: keep them on the first part only
            part.reward_timeouts = part.reward_errors = 0
            part.score_seconds = 0.0
        parts[0].reward_timeouts, parts[0].reward_errors = scored.reward_timeouts, scored.reward_errors
        parts[0].score_seconds = scored.score_seconds
        return [_Finished(check, order + k, g, part) for k, (g, part) in enumerate(zip(groups, parts))]

    @staticmethod
    def _kept(rollouts: Rollouts, filter_groups: bool) -> bool:
        """Whether a finished group counts towards the step (dynamic sampling: its rewards differ)."""
        if not len(rollouts):
            return False
        return not filter_groups or bool(rollouts.rewards.max() > rollouts.rewards.min())

    def _finish(self, finished: list[_Finished], active: list[StreamGroup], target_groups: int, filter_groups: bool,
                version: int, drawn: int, filtered: int, seconds: float, score_seconds: float, checks: int,
                sampler) -> StepRollouts:
        """Gather every engine's finished groups, choose the step's, and settle what is left (collective)."""
        layout = self.engine.layout
        mine = [(f.check, layout.rollout_dp_rank, f.order, f.group.draw, f.rollouts,
                 [(len(r.versions), min(r.versions)) for r in f.group.responses]) for f in finished]
        gathered = self.world.all_gather_objects((layout.leads_tp_group, mine, [(g.draw, g.row) for g in active],
                                                  filtered, seconds, score_seconds))
        leads = [g for g in gathered if g[0]]
        everything = sorted((entry for g in leads for entry in g[1]), key=lambda e: e[:3])
        kept = [e for e in everything if self._kept(e[4], filter_groups)]
        train_draws = {e[3] for e in kept[:target_groups]}
        surplus = {e[3] for e in kept[target_groups:]}
        in_flight = sorted(pair for g in leads for pair in g[2])  # (draw, row) of every engine's unfinished groups

        # the step's groups, numbered 0.. in (check, engine, finish order): first_groups keeps that order
        number = {e[3]: k for k, e in enumerate(everything)}
        self.last_draws = [e[3] for e in everything]  # group k of the step's Rollouts is the group drawn last_draws[k]-th
        sampled = Rollouts.concat([e[4] for e in everything], parallel=False)
        sampled.group_index = torch.tensor([number[int(d)] for d in sampled.group_index.tolist()], dtype=torch.long)
        sampled.num_filtered = sum(g[3] for g in leads)
        sampled.generate_seconds = max(g[4] for g in gathered)
        sampled.score_seconds = max(g[5] for g in gathered)
        train = sampled.select([i for i, d in enumerate(sampled.group_index.tolist())
                                if everything[d][3] in train_draws])

        trained_segments = [seg for e in everything if e[3] in train_draws for seg in e[5]]
        metrics = {
            "rollout/partial_responses": float(sum(1 for count, _ in trained_segments if count > 1)),
            "rollout/policy_lag_max": float(max((version - oldest for _, oldest in trained_segments), default=0)),
            "rollout/checks": float(checks),
        }
        # the responses still generating at the stop: what the finished ones leave out (their length so far is a
        # lower bound of their length, so a trained length well under it is the finished-first bias)
        unfinished = [r for g in active for r in g.responses if not r.finished]
        counts = self.world.all_gather_objects((len(unfinished), sum(len(r.tokens) for r in unfinished))
                                               if layout.leads_tp_group else (0, 0))
        n_unfinished, unfinished_tokens = sum(c[0] for c in counts), sum(c[1] for c in counts)
        metrics["rollout/unfinished"] = float(n_unfinished)
        metrics["response_length/unfinished_mean"] = unfinished_tokens / n_unfinished if n_unfinished else 0.0
        if self.partial:  # in-flight and surplus groups continue next step, on the rank that holds them
            left = {draw for draw, _ in in_flight} | surplus
            self.carried = sorted([g for g in active if g.draw in left] +
                                  [f.group for f in finished if f.group.draw in surplus], key=lambda g: g.draw)
            metrics["rollout/carried_groups"] = float(len(left))
            metrics["rollout/aborted"] = metrics["rollout/aborted_tokens"] = 0.0
        else:  # strictly on-policy: unfinished work is dropped, its prompts drawn again first
            back = sorted([(e[3], e[4].example_index[0]) for e in everything if e[3] in surplus] + in_flight)
            sampler.give_back([row for _, row in back])
            metrics["rollout/aborted"] = float(n_unfinished)
            metrics["rollout/aborted_tokens"] = float(unfinished_tokens)  # generated, then thrown away
            metrics["rollout/carried_groups"] = 0.0
            drawn -= len(back)  # handed back: the step did not consume them
        if len(train_draws) < target_groups:
            logger.warning("streaming: %d of %d groups %sfinished this step (%d prompts drawn); training on those",
                           len(train_draws), target_groups, "with differing rewards " if filter_groups else "", drawn)
        return StepRollouts(train=train, sampled=sampled, rounds=max(1, math.ceil(drawn / self.round_size)),
                            prompts_drawn=drawn,
                            groups_informative=sum(1 for e in everything if self._kept(e[4], True)), stream=metrics)

    # ------------------------------------------------------------------------------------------
    # Checkpoints: the draw counter is the same on every rank (RunState.extra); carried groups are per rank

    def state_dict(self) -> dict:
        return {"next_draw": self.next_draw, "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.next_draw, self.version = int(state["next_draw"]), int(state["version"])

    def local_state(self) -> dict:
        """This rank's carried groups (partial=true), JSON-able."""
        return {"carried": [asdict(g) for g in self.carried]}

    def load_local_state(self, state: dict) -> None:
        self.carried = [StreamGroup(draw=g["draw"], row=g["row"], responses=[StreamResponse(**r) for r in g["responses"]])
                        for g in state.get("carried", [])]
