"""Config of the advantage estimator: a registered name (or package.module:Class) and its parameters.

Validation resolves the name and builds the estimator with its parameters, so `golong train
RECIPE --dry-run` reports an unknown name (with the valid ones), a user class that does not import
(with the import error), a parameter the class does not take (with those it does) and a value its
__init__ rejects (e.g. tmn_reweight alpha outside [0, 1]). That imports golong.advantage (and torch)
inside `validate`, never at module import, so `golong --help` stays instant.
"""
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
        from golong.advantage.registry import IMPORT_PATH

        if ":" in self.name and not IMPORT_PATH.match(self.name):
            raise invalid("name", f"{self.name!r} is not an import path of the form package.module:ClassName",
                          "write e.g. my_lab.advantages:LeaveOneOut")
        bad = [k for k in self.params if not isinstance(k, str)]
        if bad:
            raise invalid("params", f"keys must be parameter names, got {bad}", "write e.g. {alpha: 0.8}")
        self.estimator_class()  # unknown name / import error -> ConfigError on `name`
        self.build()  # bad parameters -> ConfigError on `params`

    def estimator_class(self) -> type:
        """The estimator class `name` refers to (imports golong.advantage, hence torch)."""
        from golong.advantage.registry import resolve
        from golong.configlib import ConfigError

        import golong.advantage  # noqa: F401  (registers the built-in estimators)

        try:
            return resolve(self.name)
        except ConfigError as e:
            raise ConfigError(f"name: {e}") from None

    def build(self):
        """The estimator, built with `params`; a parameter it refuses -> ConfigError naming `params`."""
        from golong.advantage.registry import build
        from golong.configlib import ConfigError

        try:
            return build(self.name, **self.params)
        except ConfigError as e:  # a parameter the class does not take: the message lists those it does
            raise ConfigError(f"params: {e}") from None
        except (ValueError, TypeError) as e:  # a value the estimator's own __init__ rejects
            raise invalid("params", f"{self.name} refused {self.params}: {e}",
                          "give the estimator a value in its range (its docstring lists them)") from None
