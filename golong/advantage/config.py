"""Config of the advantage estimator: a registered name (or package.module:Class) and its parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from golong.configlib import invalid, option


@dataclass
class AdvantageConfig:
    name: str = option("grpo", "Estimator: grpo, dr_grpo, tmn_reweight, task_std, or package.module:ClassName for your own.")
    params: dict[str, Any] = option({}, "Keyword parameters handed to the estimator, e.g. {alpha: 0.8} for tmn_reweight.")

    def validate(self) -> None:
        if not self.name:
            raise invalid("name", "is empty", "name a registered estimator such as grpo or tmn_reweight")
