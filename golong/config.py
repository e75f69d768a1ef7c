"""The whole run's config: one section per component, each defined beside the component that owns it.

    cfg = load_config("recipes/tiny-cpu.yaml", ["trainer.total_steps=3"])
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from golong.configlib import ConfigError, invalid, load, to_dict
from golong.data.config import DataConfig
from golong.model_check import check_model_path, model_load_errors
from golong.rewards.config import RewardConfig
from golong.rollout.config import RolloutConfig, check_router_replay
from golong.trainer.config import AlgorithmConfig, LoggingConfig, ModelConfig, TrainerConfig
from golong.world import ParallelLayout

__all__ = ["Config", "ConfigError", "load_config", "to_dict"]

logger = logging.getLogger("golong")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "Policy model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "Dataset and prompts."})
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"doc": "vLLM generation."})
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"doc": "Reward scoring."})
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig, metadata={"doc": "Advantage and loss."})
    trainer: TrainerConfig = field(default_factory=TrainerConfig, metadata={"doc": "Optimizer and run."})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"doc": "Metrics sinks."})

    def validate(self) -> None:
        if self.rollout.top_p < 1 and self.algorithm.icepop.mode != "off":
            raise invalid("rollout.top_p", f"{self.rollout.top_p} truncates vLLM's sampling distribution, which the "
                          "trainer does not (it applies the temperature only), so IcePop would mask tokens for a "
                          "mismatch of its own making", "train with rollout.top_p=1.0 (section 5.1), or set "
                          "algorithm.icepop.mode=off")
        if self.trainer.share_prompt and self.model.attention in ("flash_attention_2", "torch_varlen"):
            raise invalid("model.attention", f"{self.model.attention!r} attends each packed unit as one causal "
                          "sequence, so with trainer.share_prompt a response would see its group's other responses",
                          "use model.attention=auto (flex on CUDA, per_sequence on CPU), or trainer.share_prompt=false")
        if self.rollout.max_model_len and self.rollout.max_model_len < self.rollout.max_response_length + 1:
            raise invalid("rollout.max_model_len", "leaves no room for a prompt",
                          "set 0 to derive it, or at least rollout.max_response_length + 1")
        self.validate_validation()
        estimator = self.algorithm.advantage.estimator_class()  # resolved (and built) by its own section
        if estimator.needs_groups and self.rollout.n < 2:
            raise invalid("rollout.n", f"is {self.rollout.n}, but {self.algorithm.advantage.name} compares each "
                          "response with the other responses to its prompt: with one response per prompt every "
                          "advantage is 0 and nothing trains", "set rollout.n to the group size, 2 or more "
                          "(Table 12: 16)")
        self.validate_parallel_sizes(world_size())
        check_model_path(self.model.path)  # before the checks below read its config.json
        if self.trainer.sequence_parallel_size > 1 and os.path.isdir(self.model.path):
            # refused before any engine starts (a hub id is checked when the PolicyEngine starts)
            from golong.trainer.sequence_parallel import check_model_heads

            with model_load_errors(self.model.path):
                check_model_heads(self.model.path, self.trainer.sequence_parallel_size, self.model.trust_remote_code)
        check_router_replay(self.rollout, self.model.path)  # MoE models only

    def validate_validation(self) -> None:
        """Validation during training (trainer.val_every, data.val_files, rollout.val_*, trainer.save_best)."""
        every, files = self.trainer.val_every, self.data.val_files
        if every and not files:
            raise invalid("trainer.val_every", f"is {every}, but data.val_files is empty: there is nothing to validate on",
                          "set data.val_files=[held-out.jsonl] (rows in the formats of data.train_files), or "
                          "trainer.val_every=0")
        if files and not every and os.environ.get("RANK", "0") == "0":
            # a warning, not an error: turning validation off for one run should not need a second override
            logger.warning("data.val_files is set but trainer.val_every is 0: this run never validates (set "
                           "trainer.val_every, e.g. 50, to validate before the first step and every 50 steps)")
        if self.trainer.save_best and not every:
            raise invalid("trainer.save_best", "needs validation scores, but trainer.val_every is 0",
                          "set trainer.val_every and data.val_files, or trainer.save_best=false")
        longest = self.rollout.val_response_length
        if every and self.rollout.max_model_len and self.rollout.max_model_len < longest + 1:
            raise invalid("rollout.val_max_tokens", f"validation responses of up to {longest} tokens leave no room for "
                          f"a prompt in rollout.max_model_len={self.rollout.max_model_len}",
                          "lower rollout.val_max_tokens (0: rollout.max_response_length), or set rollout.max_model_len "
                          "to 0 to derive it")

    def validate_parallel_sizes(self, world: int | None) -> None:
        """Parallel sizes against the number of ranks, when it is known (torchrun sets WORLD_SIZE)."""
        if world is not None:
            ParallelLayout.check(world, self.rollout.tensor_parallel_size, self.trainer.sequence_parallel_size)

    @property
    def max_model_len(self) -> int:
        """The longest prompt + response the engines must hold (a validation response too, when validating)."""
        response = self.rollout.max_response_length
        if self.trainer.val_every:
            response = max(response, self.rollout.val_response_length)
        return self.rollout.max_model_len or self.data.max_prompt_length + response


def world_size() -> int | None:
    """The number of ranks of this run if torchrun (or the user) set WORLD_SIZE, else None (unknown)."""
    value = os.environ.get("WORLD_SIZE", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def load_config(recipe: str | None, overrides: list[str] = ()) -> Config:
    """Load a YAML recipe, apply `key=value` overrides, check every key, type and value."""
    return load(Config, recipe, list(overrides))
