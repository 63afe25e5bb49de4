"""Dotted-key overrides of a tree of frozen dataclasses: `--set key=value` parsing, coercion, unknown-key hints.

`set_key(cfg, "optimizer.learning_rate", "3e-4")` returns cfg with that field replaced, the value coerced to the
field's type (bool, int, float, str, Literal, tuples as comma-separated lists, unions with None); an unknown key
fails with a did-you-mean (a TRL / tunix name, the section that has a bare field name, or a close match), a bad
value names the key and the type wanted. Nothing here knows the trainer's sections: `jax_cat.training.config` holds
`Config`, reads recipes and validates the result.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jax_cat.training.familiar_names import familiar_hint


class ConfigError(ValueError):
    """A bad recipe, key or value (raised before anything compiles; the CLI prints it as one line, exit 2)."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass tree `cls` (sections recursed into), e.g. "optimizer.learning_rate"."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += all_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _did_you_mean(key: str, root: type) -> str:
    familiar = familiar_hint(key)  # TRL / tunix names: the key to use here and what differs
    if familiar:
        return familiar
    close = []
    if "." not in key:  # a bare field name: suggest the first section that has it
        close = [k for k in all_keys(root) if k.rsplit(".", 1)[-1] == key][:1]
    close = close or difflib.get_close_matches(key, all_keys(root), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """value (a string from --set, or a TOML/JSON value) as the field's type, or ConfigError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, Sequence):
            raise ConfigError(f"{key}: expected a comma-separated list, got {value!r}")
        return tuple(_coerce(key, v.strip() if isinstance(v, str) else v, args[0]) for v in items if v != "")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {hint}")  # pragma: no cover - a bug in this module


def _set(obj: Any, path: list[str], value: Any, full_key: str, root: type) -> Any:
    cls = type(obj)
    names = {f.name for f in dataclasses.fields(cls)}
    name = path[0]
    if name not in names:
        raise ConfigError(f"unknown config key {full_key!r}{_did_you_mean(full_key, root)}")
    hint = _hints(cls)[name]
    if dataclasses.is_dataclass(hint):
        if len(path) == 1:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full_key} is a section; set one of its keys, e.g. {all_keys(hint, full_key + '.')[0]}")
            new = getattr(obj, name)
            for sub, v in value.items():
                new = _set(new, [sub], v, f"{full_key}.{sub}", root)
            return dataclasses.replace(obj, **{name: new})
        return dataclasses.replace(obj, **{name: _set(getattr(obj, name), path[1:], value, full_key, root)})
    if len(path) > 1:
        raise ConfigError(f"unknown config key {full_key!r}{_did_you_mean(full_key, root)}")
    value = _coerce(full_key, value, hint)
    try:
        return dataclasses.replace(obj, **{name: value})
    except (ValueError, TypeError) as err:  # the section's own validation (e.g. CATLossConfig.__post_init__)
        raise ConfigError(f"{full_key}: {err}") from None


def set_key(cfg: Any, key: str, value: Any) -> Any:
    """cfg (a frozen dataclass tree) with the dotted `key` set to `value` (a string from --set, or a typed value).

    The value is coerced to the field's type; an unknown key or a bad value is a ConfigError naming the key (with a
    did-you-mean among cfg's keys). The section's own validation runs; cross-field checks are the caller's.
    """
    return _set(cfg, key.split("."), value, key, type(cfg))


def parse_set(items: Sequence[str]) -> dict[str, str]:
    """["a.b=1", ...] -> {"a.b": "1"}; a missing '=' is a ConfigError."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        out[key.strip()] = value.strip()
    return out
