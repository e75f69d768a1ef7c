"""Names -> estimator classes, and `build` for a registered name or a `package.module:ClassName`.

    @register("my_estimator")
    class MyEstimator(AdvantageEstimator): ...

    build("tmn_reweight", alpha=0.8)
    build("my_lab.advantages:LeaveOneOut", scale=0.5)   # a subclass outside golong, no registration
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re

from golong.advantage.base import AdvantageEstimator
from golong.configlib import ConfigError

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:ClassName

_ESTIMATORS: dict[str, type[AdvantageEstimator]] = {}


def register(name: str):
    """Class decorator: make an AdvantageEstimator subclass buildable as `name`."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, AdvantageEstimator)):
            raise TypeError(f"register({name!r}) needs a subclass of golong.advantage.AdvantageEstimator, got {cls!r}")
        if ":" in name:
            raise ValueError(f"estimator name {name!r} may not contain ':' (reserved for package.module:ClassName)")
        if name in _ESTIMATORS:
            old = _ESTIMATORS[name]
            raise ValueError(f"advantage estimator {name!r} is already registered ({old.__module__}.{old.__qualname__})")
        _ESTIMATORS[name] = cls
        return cls

    return decorator


def registered_names() -> list[str]:
    return sorted(_ESTIMATORS)


def _import_estimator(path: str) -> type[AdvantageEstimator]:
    if not IMPORT_PATH.match(path):
        raise ConfigError(f"advantage estimator {path!r}: an import path must look like package.module:ClassName")
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"advantage estimator {path!r}: cannot import module {module_name!r} ({e}). "
                          f"Fix: install the package or put its folder on PYTHONPATH") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [n for n, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, AdvantageEstimator) and v is not AdvantageEstimator]
        raise ConfigError(f"advantage estimator {path!r}: module {module_name!r} has no {class_name!r}; "
                          f"estimator classes there: {', '.join(sorted(found)) or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, AdvantageEstimator)):
        raise ConfigError(f"advantage estimator {path!r}: {cls!r} is not a subclass of "
                          f"golong.advantage.AdvantageEstimator. Fix: subclass it and implement compute(batch)")
    return cls


def _check_params(name: str, cls: type, params: dict) -> None:
    """Unknown or missing keyword parameters -> a ConfigError listing what the class accepts."""
    signature = inspect.signature(cls)
    try:
        signature.bind(**params)
    except TypeError as e:
        accepted = [p.name for p in signature.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        hints = [f"{k!r} -> {close[0]!r}?" for k in params if k not in accepted
                 for close in [difflib.get_close_matches(k, accepted, n=1)] if close]
        hint = f" Did you mean: {', '.join(hints)}" if hints else ""
        raise ConfigError(f"advantage estimator {name!r}: bad parameters ({e}). It accepts: "
                          f"{', '.join(accepted) or 'no parameters'} (algorithm.advantage.params).{hint}") from None


def resolve(name: str) -> type[AdvantageEstimator]:
    """The class registered as `name`, or imported from `package.module:ClassName`; ConfigError otherwise."""
    if ":" in name:
        return _import_estimator(name)
    if name in _ESTIMATORS:
        return _ESTIMATORS[name]
    close = difflib.get_close_matches(name, _ESTIMATORS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown advantage estimator {name!r}.{hint} Valid names: {', '.join(registered_names())}, "
                      f"or package.module:ClassName for your own AdvantageEstimator subclass")


def build(name: str, **params) -> AdvantageEstimator:
    """The estimator registered as `name`, or the class at `package.module:ClassName`, built with `params`.

    Unknown names, import failures and parameters the class does not take raise ConfigError; a value
    the estimator's own __init__ rejects (e.g. tmn_reweight alpha outside [0, 1]) raises its ValueError.
    """
    cls = resolve(name)
    _check_params(name, cls, params)
    return cls(**params)
