"""Typed stage configs: dataclass defaults < YAML file < ``key=value`` overrides.

Every stage config is a tree of dataclasses whose fields carry help text
(``field(metadata={"help": ...})``). :func:`load_config` builds one from a YAML file and
dotted overrides (``training.learning_rate=1e-4``), checks every key and type before
anything heavy is imported, and names the offending key on error.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from kuberlhf.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata={"help": help}, **kwargs)
    if dataclasses.is_dataclass(default):  # a section whose defaults differ from its class's
        instance = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(instance), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=1e-4"`` -> (["a", "b"], 1e-4); the value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value (for example training.max_steps=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err.problem})") from None
    return key.strip().split("."), value


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r}: invalid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from defaults, an optional YAML file and ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, merge_overrides(data, list(overrides or [])))


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build a (nested) config dataclass, rejecting unknown keys and wrong types by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    open_field = getattr(cls, "_open_section", None)  # a dict field that takes the undeclared keys
    kwargs: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known and open_field:
            extras[key] = value
            continue
        if key not in known:
            raise unknown_key(name, key, known, prefix)
        field_ = known[key]
        section_default = field_.default_factory not in (dataclasses.MISSING, hints[key])
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and section_default:
            # Keys given for a section override that section's own defaults, key by key.
            value = deep_merge(dataclasses.asdict(field_.default_factory()), value)
        kwargs[key] = _coerce(hints[key], value, name)
    if extras:
        kwargs[open_field] = {**kwargs.get(open_field, {}), **extras}
    missing = [
        f"{prefix}{f.name}"
        for f in known.values()
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required config key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config {prefix.rstrip('.') or cls.__name__}: {err}") from None


def unknown_key(name: str, key: str, known: Any, prefix: str) -> ConfigError:
    """``unknown config key 'a.b' (did you mean 'a.c'?)``."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {name!r}{hint}")


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` updated with ``update``, nested dicts merged key by key rather than replaced (neither is changed)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = deep_merge(merged[key], value)
        merged[key] = value
    return merged


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, f"{name}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"config key {name!r}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key {name!r}: must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {name!r}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"config key {name!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(data: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; values that are not scalars become strings (tracker hyperparameters)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field of a config tree: the text of ``--help-config``."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        )
        rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(f"config key {key!r}: {message}")


__all__ = ["option", "load_config", "from_dict", "to_dict", "to_yaml", "describe", "require"]
