"""Config dataclass plumbing shared by every network: one frozen dataclass of hyper-parameters
per network, saved beside its weights as JSON and validated when loaded (no string-built
objects, no pickle)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from mavcli.errors import PackError

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def config_to_json(config: Any) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build `cls` from a dict, checking names and types; a PackError names what is wrong."""
    if not isinstance(data, dict):
        raise PackError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PackError(f"{cls.__name__}: unknown config keys {unknown}; this pack was made by another mavcli version")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(cls.__name__, name, hints[name], value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise PackError(f"{cls.__name__}: invalid config: {err}") from None


def config_from_json(cls: type[C], text: str) -> C:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PackError(f"{cls.__name__}: config is not valid JSON ({err})") from None
    return config_from_dict(cls, data)


def _coerce(owner: str, name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(owner, name, inner[0], value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise PackError(f"{owner}.{name}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(owner, name, elem, v) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not (type(value) is hint):
        raise PackError(f"{owner}.{name}: expected {hint.__name__}, got {value!r}")
    return value
