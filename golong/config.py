"""The whole run's config: one section per component, each defined beside the component that owns it.

    cfg = load_config("recipes/tiny-cpu.yaml", ["trainer.total_steps=3"])
"""
from __future__ import annotations

from dataclasses import dataclass, field

from golong.configlib import ConfigError, invalid, load, to_dict
from golong.data.config import DataConfig
from golong.rewards.config import RewardConfig
from golong.rollout.config import RolloutConfig, check_router_replay
from golong.trainer.config import AlgorithmConfig, LoggingConfig, ModelConfig, TrainerConfig

__all__ = ["Config", "ConfigError", "load_config", "to_dict"]


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
        if self.rollout.max_model_len and self.rollout.max_model_len < self.rollout.max_response_length + 1:
            raise invalid("rollout.max_model_len", "leaves no room for a prompt",
                          "set 0 to derive it, or at least rollout.max_response_length + 1")

        check_router_replay(self.rollout, self.model.path)  # MoE models only

    @property
    def max_model_len(self) -> int:
        """The longest prompt + response the engines must hold."""
        return self.rollout.max_model_len or self.data.max_prompt_length + self.rollout.max_response_length


def load_config(recipe: str | None, overrides: list[str] = ()) -> Config:
    """Load a YAML recipe, apply `key=value` overrides, check every key, type and value."""
    return load(Config, recipe, list(overrides))
