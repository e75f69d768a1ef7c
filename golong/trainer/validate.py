"""Validation during training (trainer.val_every): the policy answers held-out rows (data.val_files) with
the paper's validation sampling (section 5.1: temperature 0.6, top-p 0.95; rollout.val_*) before the first
step and after every step that is a multiple of val_every, and the scores join that step's metrics.

    validator = Validator.load(cfg, tokenizer, world)       # with the training data, before any engine starts
    validator.begin(run, checkpointer, metrics, step)       # a fresh run validates its initial policy: step 0
    metrics.log(step, {..., **validator.after_step(step)})  # step % val_every == 0: the val/ metrics, else {}

The rows are templated, tokenized and length-filtered as the training prompts (golong/data/prompt_set.py; the
data.max_rows subset is for training only), then generated and scored by a second RolloutCollector that
shares the run's engine and reward pool: the path of training rollouts and `golong eval`. Under torchrun
every rank takes part (the collector splits the rows over the engines and gathers every response), every
rank computes the metrics and rank 0 logs them (golong.eval.eval_report's definitions):

    val/<task>/mean_score, val/<task>/pass@1    per task of the validation rows
    val/mean_score, val/pass@1                  over every validation row
    val/macro                                   mean over tasks of mean_score (the paper's "Avg.")
    time/validate                               seconds

The engine is awake whenever this runs: at start-up, after a resume's weight sync, and after every step
(train_step ends with update_weights, which wakes the KV cache). Sampling seeds are
request_seeds(rollout.seed, -(s + 1), row) at step s: their own namespace (training steps seed with
non-negative step numbers), the same on every rank and after a resume, so a resumed run validates as an
uninterrupted one. A run resumed from step k does not validate step k again: that step's line holds it.

trainer.save_best keeps the checkpoint of the best trainer.save_best_metric in checkpoints/best/ (written
as step_* checkpoints are, but never rotated by keep_last, never named by `latest`, never resumed from).
Its run_state.json records {"best": {"metric", "score", "step"}}, which a resumed run reads back; only a
strictly better score replaces it, so of equal scores the earliest step is kept.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from golong.configlib import ConfigError
from golong.eval import eval_report
from golong.rollout.collect import RolloutCollector
from golong.trainer.checkpoint import BEST_DIR, RUN_STATE_FILE, Checkpointer, RunState

if TYPE_CHECKING:
    from golong.config import Config
    from golong.data.prompt_set import PromptSet
    from golong.trainer.loop import Run
    from golong.trainer.metrics import MetricsLogger
    from golong.world import World

logger = logging.getLogger("golong")


def val_seed_step(step: int) -> int:
    """The `step` request_seeds gets for the validation at training step `step`: -(step + 1), never a
    training step's (those are >= 0)."""
    return -(step + 1)


def metric_names(tasks: list[str]) -> list[str]:
    """Every val/ metric a validation over rows of `tasks` logs (time/validate aside)."""
    return (["val/macro", "val/mean_score", "val/pass@1"]
            + [f"val/{t}/{m}" for t in tasks for m in ("mean_score", "pass@1")])


def validation_metrics(examples: list, scores: list[list[float]], pass_threshold: float) -> dict[str, float]:
    """The val/ metrics of `examples` whose responses scored `scores[i]` (eval_report's numbers); a task
    whose rows got no response (none here: the prompts are filtered to fit) is left out."""
    report = eval_report(examples, scores, pass_threshold)
    metrics: dict[str, float] = {}
    for task, m in report["tasks"].items():
        if m["rows"]:
            metrics[f"val/{task}/mean_score"] = m["mean_score"]
            metrics[f"val/{task}/pass@1"] = m["pass@1"]
    if report["overall"]["rows"]:
        metrics["val/mean_score"] = report["overall"]["mean_score"]
        metrics["val/pass@1"] = report["overall"]["pass@1"]
        metrics["val/macro"] = report["macro"]["mean_score"]
    return metrics


@dataclass
class BestScore:
    """trainer.save_best's bookkeeping: the best value of `metric` so far and the step that had it."""

    metric: str
    score: float | None = None  # None: nothing validated yet (the first validation is always the best)
    step: int | None = None

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record step's validation; True when it is strictly better than every earlier one (save it)."""
        value = metrics.get(self.metric)
        if value is None:
            return False
        if self.score is not None and not value > self.score:
            return False
        self.score, self.step = float(value), step
        return True

    def as_dict(self) -> dict:
        return {"metric": self.metric, "score": self.score, "step": self.step}


def read_best(checkpointer: Checkpointer, metric: str, world: World) -> BestScore:
    """The best score recorded in checkpoints/best/run_state.json (rank 0's folder, sent to every rank);
    an empty BestScore when there is none, or when it was kept for another metric."""
    recorded = None
    if world.is_main:
        path = os.path.join(checkpointer.root, BEST_DIR, RUN_STATE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f).get("extra", {}).get("best")
    recorded = world.broadcast(recorded)
    if not recorded:
        return BestScore(metric)
    if recorded["metric"] != metric:
        if world.is_main:
            logger.warning("checkpoints/%s holds the best %s (step %s); this run keeps the best %s "
                           "(trainer.save_best_metric), so its next validation replaces it",
                           BEST_DIR, recorded["metric"], recorded["step"], metric)
        return BestScore(metric)
    return BestScore(metric, score=recorded["score"], step=recorded["step"])


class Validator:
    """Validation of a training run; does nothing when trainer.val_every is 0 (data is None)."""

    def __init__(self, cfg: Config, world: World, data: PromptSet | None):
        self.cfg, self.world, self.data = cfg, world, data
        self.every = cfg.trainer.val_every if data is not None else 0
        self.collector: RolloutCollector | None = None
        self.run: Run | None = None
        self.checkpointer: Checkpointer | None = None
        self.best: BestScore | None = None

    @classmethod
    def load(cls, cfg: Config, tokenizer, world: World) -> Validator:
        """Read data.val_files as the training prompts are read (every row checked, templated, tokenized,
        the prompts over data.max_prompt_length dropped), and check trainer.save_best_metric against their
        tasks: before any engine starts."""
        if not cfg.trainer.val_every:
            return cls(cfg, world, None)
        from golong.data.prompt_set import read_prompt_set

        data = read_prompt_set(cfg.data.val_files, replace(cfg.data, max_rows=0), tokenizer, world,
                               "validation data")
        if not data.examples:
            raise ConfigError(f"data.val_files: none of the {data.num_dropped_long} validation prompts is at most "
                              f"data.max_prompt_length={cfg.data.max_prompt_length} tokens. Fix: use shorter "
                              "validation rows, or raise data.max_prompt_length")
        metric = cfg.trainer.save_best_metric
        if cfg.trainer.save_best and metric not in metric_names(data.tasks):
            raise ConfigError(f"trainer.save_best_metric: {metric} is not logged: the validation rows' tasks are "
                              f"{', '.join(data.tasks)}. Fix: use one of {', '.join(metric_names(data.tasks))}")
        return cls(cfg, world, data)

    def begin(self, run: Run, checkpointer: Checkpointer, metrics: MetricsLogger, step: int) -> None:
        """Once the engines are up and a resumed checkpoint is loaded (`step`: its step, 0 for a fresh run).
        Collective. A fresh run validates its initial policy and logs it as step 0; a resumed run reads
        back the best score so far (trainer.save_best) and validates next at the next multiple of val_every."""
        if not self.every:
            return
        shared = run.collector  # the run's engine, reward pool, tokenizer and stop tokens
        self.collector = RolloutCollector(run.world, shared.engine, shared.scorer, shared.tokenizer,
                                          shared.stop_ids, self.data.examples, self.data.prompts, self.data.tasks)
        self.run, self.checkpointer = run, checkpointer
        if self.cfg.trainer.save_best:
            # a fresh run starts from nothing: a best/ left by an earlier attempt is replaced by step 0's
            self.best = read_best(checkpointer, self.cfg.trainer.save_best_metric, self.world) if step else \
                BestScore(self.cfg.trainer.save_best_metric)
        if step == 0:
            metrics.log(0, self.validate(0))

    def after_step(self, step: int) -> dict[str, float]:
        """The val/ metrics of `step` when it is a multiple of trainer.val_every (collective), else {}."""
        if not self.every or step % self.every:
            return {}
        return self.validate(step)

    def validate(self, step: int) -> dict[str, float]:
        """Generate rollout.val_n responses per validation row with the current policy, score them, and
        return the metrics; with trainer.save_best, save checkpoints/best/ when the score is a new best."""
        cfg, data = self.cfg.rollout, self.data
        start = time.perf_counter()
        rollouts = self.collector.collect(list(range(len(data.examples))), step=val_seed_step(step), n=cfg.val_n,
                                          temperature=cfg.val_temperature, top_p=cfg.val_top_p,
                                          max_tokens=cfg.val_response_length)
        self.collector.route_store.clear()  # MoE routes of validation responses: nothing trains on them
        scores, _ = rollouts.per_example(len(data.examples))
        values = validation_metrics(data.examples, scores, self.cfg.reward.pass_threshold)
        saved = self.best is not None and self.best.update(step, values)
        if saved:
            run = self.run
            self.checkpointer.save(run.policy.ds_engine, RunState(step=step, sampler=run.sampler.state_dict(),
                                                                  extra={"best": self.best.as_dict()}), name=BEST_DIR)
        values["time/validate"] = time.perf_counter() - start
        if self.world.is_main:
            tasks = ", ".join(f"{t} {values[f'val/{t}/mean_score']:.4f}" for t in data.tasks
                              if f"val/{t}/mean_score" in values)
            best = ""
            if self.best is not None and self.best.score is not None:
                best = (f"; new best {self.best.metric}, saved to checkpoints/{BEST_DIR}" if saved else
                        f"; best {self.best.metric} {self.best.score:.4f} at step {self.best.step}")
            logger.info("validation at step %d: val/macro %.4f (%s), val/pass@1 %.4f, %d rows x %d, %.1f s%s",
                        step, values.get("val/macro", float("nan")), tasks, values.get("val/pass@1", float("nan")),
                        len(data.examples), cfg.val_n, values["time/validate"], best)
        return values
