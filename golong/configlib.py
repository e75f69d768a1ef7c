"""Typed config machinery: dataclass sections filled from YAML and `key=value` overrides.

Every component declares its own section as a dataclass whose fields are made with `option`
(one default, one line of doc). This module turns nested dicts into those dataclasses, checking
every key and type on the way, so a typo in a recipe or on the command line stops the run before
anything starts, with the key, where it came from, and the closest valid key.

It imports nothing heavy (no torch), so `golong train --dry-run` is instant.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

import yaml


class UsageError(ValueError):
    """A command-line argument or option a user got wrong (the CLI prints it as one line, exit status 2)."""


class ConfigError(ValueError):
    """A recipe or override is wrong; the message names the key, its source and the fix."""


def option(default: Any, doc: str) -> Any:
    """A config field with its default and its one-line documentation."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def invalid(key: str, reason: str, fix: str) -> ConfigError:
    """The error a section's `validate()` raises: which field, why, and what to do."""
    return ConfigError(f"{key}: {reason}. Fix: {fix}.")


def field_doc(f: dataclasses.Field) -> str:
    return f.metadata.get("doc", "")


# ----------------------------------------------------------------------------------------------
# Building dataclasses from dicts


class _Sources:
    """Remembers where each dotted key was set (a recipe file or the command line)."""

    def __init__(self, default: str):
        self.default = default
        self.by_key: dict[str, str] = {}

    def of(self, key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            src = self.by_key.get(".".join(parts[:n]))
            if src:
                return src
        inner = [src for k, src in self.by_key.items() if k.startswith(key + ".")]  # e.g. params.alpha=3
        return inner[0] if inner else self.default


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, sources: _Sources) -> Any:
    where = f"{key} (from {sources.of(key)})"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, sources, prefix=key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, sources)
        raise TypeError(f"unsupported union type {tp} for {key}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `off`/`on`/`no`/`yes` as a boolean
            value = next((a for a in args if isinstance(a, str) and yaml.safe_load(a) is value), value)
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `2e-6` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", sources) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config type {_type_name(tp)} for {key}")


def build(cls: type, data: dict, sources: _Sources | None = None, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from `data`, checking every key and type, then `validate()`."""
    sources = sources or _Sources("defaults")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean `{prefix + '.' if prefix else ''}{close[0]}`?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{key} (from {sources.of(key)}): unknown key{hint} Valid keys here: {valid}")
        kwargs[name] = _coerce(value, hints[name], key, sources)
    for name in fields.keys() - kwargs.keys():  # absent sections still get their defaults validated
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], {}, sources, f"{prefix}.{name}" if prefix else name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{prefix + '.' if prefix else ''}{e} (from {sources.of(full)})") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain YAML-ready data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------
# Recipes and overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as YAML: numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} (from command line): expected key=value, e.g. trainer.total_steps=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} (from command line): the key is empty or has an empty part")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r} (from command line): the value is not valid YAML ({e.problem}). "
                          "Fix: quote the whole override, e.g. 'algorithm.advantage.params={alpha: 0.8}'") from None


def _set_path(tree: dict, dotted: str, value: Any, source: str) -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} (from {source}): is a value, not a section")
        node = child
    node[parts[-1]] = value


def load(cls: type, recipe: str | None, overrides: list[str] = ()) -> Any:
    """Read `recipe` (YAML, safe_load), apply `key=value` overrides, build and validate `cls`."""
    sources = _Sources(recipe or "defaults")
    data: dict = {}
    if recipe:
        try:
            with open(recipe, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"recipe {recipe!r}: file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {recipe!r}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"recipe {recipe!r}: the top level must be a mapping of sections")
        data = loaded or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value, "command line")
        sources.by_key[key] = "command line"
    return build(cls, data, sources)


def reference_markdown(cls: type, prefix: str = "") -> str:
    """A markdown table of every field (key, type, default, doc), for the README."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append(reference_markdown(tp, key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{key}` | `{_type_name(tp)}` | `{default!r}` | {field_doc(f)} |")
    if not prefix:
        rows.insert(0, "| key | type | default | meaning |\n|---|---|---|---|")
    return "\n".join(rows)
