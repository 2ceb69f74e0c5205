"""Typed records: frozen dataclasses read from JSON with every field checked, and written back.

Every file that crosses a machine boundary (the bundle manifest, a device profile, a Pareto front)
is a tree of frozen dataclasses. :func:`convert` builds one from parsed JSON, driven by the
dataclass's type hints: unknown keys are refused, a missing required key is named, ``bool`` is never
an ``int``, floats must be finite, and field metadata adds bounds (``ge``, ``le``, ``gt``) and size
limits (``max_items``). Every failure is a :class:`SchemaError` naming the offending field by its path
(``stages[3].inputs[0].shape``); a ``__post_init__`` checks what spans several fields.

Why our own ~200 lines instead of msgspec or pydantic: the runtime must stay numpy + one inference
backend on a Raspberry Pi or a phone, the records are small (parse speed does not matter), and plain
dataclasses keep ``dataclasses.replace``, ``asdict`` and the style of the rest of the code base. The
JSON itself is parsed by :func:`edgeskip.fsutil.loads_json`, which bounds nesting and digits first.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from edgeskip.errors import ConfigError
from edgeskip.fsutil import loads_json

__all__ = ["Record", "SchemaError", "convert", "field", "read_json_record", "to_json"]

R = TypeVar("R", bound="Record")
_NONE = type(None)


class SchemaError(ConfigError):
    """A record does not have the shape its type says; the message names the field."""


def field(*, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING, ge: float | None = None,
          le: float | None = None, gt: float | None = None, max_items: int | None = None, help: str = "") -> Any:
    """A dataclass field with bounds checked by :func:`convert` (and a help text for the command line)."""
    meta: dict[str, Any] = {k: v for k, v in (("ge", ge), ("le", le), ("gt", gt), ("max_items", max_items)) if v is not None}
    if help:
        meta["help"] = help
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(tp: Any, value: Any, where: str = "", meta: Mapping[str, Any] | None = None) -> Any:
    """``value`` (parsed JSON) as type ``tp``; a :class:`SchemaError` naming ``where`` when it does not fit."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, where)
    if origin in (Union, types.UnionType):
        return _union(tp, value, where, meta)
    if origin is Literal:
        if not any(value == c and type(value) is type(c) for c in typing.get_args(tp)):
            raise SchemaError(f"{where or 'value'}: must be one of {', '.join(map(repr, typing.get_args(tp)))}, "
                              f"got {_show(value)}")
        return value
    if origin is tuple:
        return _tuple(tp, value, where, meta)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _mapping(tp, value, where, meta)
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: must be an integer, got {_show(value)}")
        return _bounded(value, where, meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise SchemaError(f"{where}: must be a finite number, got {value!r}")
        return _bounded(float(value), where, meta)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: must be a string, got {_show(value)}")
        return value
    if tp is _NONE:
        if value is not None:
            raise SchemaError(f"{where}: must be null, got {_show(value)}")
        return None
    raise TypeError(f"convert: unsupported type {tp!r} at {where}")  # a programming error, not bad input


def _dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where or cls.__name__}: must be an object, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise SchemaError(f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(fields)})")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{path}: required key is missing")
            continue
        kwargs[name] = convert(hints[name], value[name], path, f.metadata)
    try:
        return cls(**kwargs)
    except SchemaError:
        raise
    except ConfigError as exc:  # a __post_init__ check spanning fields
        raise SchemaError(f"{where or cls.__name__}: {exc}") from None


def _union(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if _NONE in args:
            return None
        raise SchemaError(f"{where}: must not be null")
    errors = []
    for arg in args:
        if arg is _NONE:
            continue
        try:
            return convert(arg, value, where, meta)
        except SchemaError as exc:
            errors.append(str(exc))
    raise SchemaError(errors[0] if len(errors) == 1 else f"{where}: {_show(value)} fits none of "
                      f"{' | '.join(_name(a) for a in args)}")


def _tuple(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise SchemaError(f"{where}: must be a list, got {_show(value)}")
    limit = meta.get("max_items")
    if limit is not None and len(value) > limit:
        raise SchemaError(f"{where}: holds {len(value)} items, at most {limit} are allowed")
    args = typing.get_args(tp)
    item_meta = {k: v for k, v in meta.items() if k != "max_items"}
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where}[{i}]", item_meta) for i, v in enumerate(value))
    if len(value) != len(args):
        raise SchemaError(f"{where}: must hold {len(args)} items, got {len(value)}")
    return tuple(convert(a, v, f"{where}[{i}]", item_meta) for i, (a, v) in enumerate(zip(args, value)))


def _mapping(tp: Any, value: Any, where: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where}: must be an object, got {_show(value)}")
    limit = meta.get("max_items")
    if limit is not None and len(value) > limit:
        raise SchemaError(f"{where}: holds {len(value)} entries, at most {limit} are allowed")
    args = typing.get_args(tp) or (str, Any)
    item_meta = {k: v for k, v in meta.items() if k != "max_items"}
    out = {}
    for k, v in value.items():
        key = convert(args[0], k, f"{where} key", {})
        out[key] = convert(args[1], v, f"{where}.{k}", item_meta)
    return out


def _bounded(value: float, where: str, meta: Mapping[str, Any]) -> Any:
    ge, le, gt = meta.get("ge"), meta.get("le"), meta.get("gt")
    if (ge is not None and value < ge) or (le is not None and value > le) or (gt is not None and value <= gt):
        bounds = [f">= {ge}" if ge is not None else "", f"> {gt}" if gt is not None else "",
                  f"<= {le}" if le is not None else ""]
        raise SchemaError(f"{where}: must be {' and '.join(b for b in bounds if b)}, got {value!r}")
    return value


def _name(tp: Any) -> str:
    return "null" if tp is _NONE else getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def to_json(value: Any) -> Any:
    """A record (or anything holding records) as plain JSON values: dataclasses as objects, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


class Record:
    """Mixin for frozen dataclasses that cross a file boundary: ``from_dict`` checks, ``to_dict`` writes."""

    @classmethod
    def from_dict(cls: type[R], data: Any, where: str = "") -> R:
        return convert(cls, data, where)  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)  # type: ignore[no-any-return]


def read_json_record(path: Any, fmt: str, error: type[Exception], what: str, command: str, *,
                     legacy: Any = None) -> dict[str, Any]:
    """The JSON object a command wrote (a profile, a Pareto front) with its ``format`` checked: a missing file
    says which command writes it, an unreadable one why; every failure is ``error``. ``legacy(data, path)``
    sees the parsed JSON first, to refuse a known older layout with a better message."""
    path = Path(path)
    try:
        data = loads_json(path.read_bytes())
    except FileNotFoundError:
        raise error(f"no {what} at {path}: run edgeskip {command} first") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path} is not a readable {what}: {exc}") from None
    if legacy is not None:
        legacy(data, path)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} is not an edgeskip {what}")
    return data
