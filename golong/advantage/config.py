"""Config of the advantage estimator: a registered name (or package.module:Class) and its parameters.

Only the shape is checked here (this module must not import torch); `golong.advantage.build`
checks the name against the registry and the parameters against the class at start-up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from golong.configlib import invalid, option

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:ClassName


@dataclass
class AdvantageConfig:
    name: str = option("grpo", "Estimator: grpo, dr_grpo, tmn_reweight, task_std, or package.module:ClassName for your own.")
    params: dict[str, Any] = option({}, "Keyword parameters handed to the estimator, e.g. {alpha: 0.8} for tmn_reweight.")

    def validate(self) -> None:
        if not self.name:
            raise invalid("name", "is empty", "name a registered estimator such as grpo or tmn_reweight")
        if ":" in self.name and not IMPORT_PATH.match(self.name):
            raise invalid("name", f"{self.name!r} is not an import path of the form package.module:ClassName",
                          "write e.g. my_lab.advantages:LeaveOneOut")
        bad = [k for k in self.params if not isinstance(k, str)]
        if bad:
            raise invalid("params", f"keys must be parameter names, got {bad}", "write e.g. {alpha: 0.8}")
