"""Typed payloads: plain values in, the types the code declares out.

Payloads travel as msgpack of plain values (see :mod:`.serialization`), so other languages can
read and write them. On the way out, :func:`to_plain` turns dataclasses, pydantic models, enums,
decimals, dates, timedeltas and sets into plain values; on the way in, :func:`from_plain` rebuilds
the declared type (an annotated parameter, a function's return annotation, or an explicit
``return_type=``/``data_type=``) and names the field that does not fit.

Pure: pydantic is used only when the application imported it (it is never imported here).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from .serialization import SerializationError, is_pydantic_model, to_plain

__all__ = ["from_plain", "input_type", "rebuild", "return_type", "to_plain"]

_NONE_TYPE = type(None)


def _kind(value: Any) -> str:
    return type(value).__qualname__


def _fail(path: str, message: str) -> SerializationError:
    where = f"field {path!r}: " if path else ""
    return SerializationError(f"{where}{message}")


def from_plain(value: Any, tp: Any, path: str = "") -> Any:
    """Rebuild ``value`` (as decoded from a payload) into type ``tp``.

    ``path`` names the position inside the payload in errors (``items[2].sku``). Raises
    :class:`SerializationError` naming the field that does not fit."""
    if tp is Any or tp is object or (tp is None and value is None) or isinstance(tp, typing.TypeVar):
        return value
    if tp is None or tp is _NONE_TYPE:
        if value is not None:
            raise _fail(path, f"expected None, got {_kind(value)}")
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return from_plain(value, typing.get_args(tp)[0], path)
    if origin is typing.Union or origin is types.UnionType:
        return _union(value, typing.get_args(tp), path)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise _fail(path, f"expected one of {typing.get_args(tp)!r}, got {value!r}")
        return value
    if origin is not None:
        return _generic(value, origin, typing.get_args(tp), path)
    if not isinstance(tp, type):
        return value  # a string annotation that could not be resolved, a NewType, ...
    return _class(value, tp, path)


def _union(value: Any, args: tuple[Any, ...], path: str) -> Any:
    if value is None and _NONE_TYPE in args:
        return None
    candidates = [a for a in args if a is not _NONE_TYPE]
    for arg in candidates:  # an exact match first: int stays int in int | float
        if isinstance(arg, type) and type(value) is arg:
            return value
    errors: list[str] = []
    for arg in candidates:
        try:
            return from_plain(value, arg, path)
        except SerializationError as exc:
            errors.append(str(exc))
    names = " | ".join(getattr(a, "__name__", repr(a)) for a in args)
    raise _fail(path, f"{_kind(value)} fits none of {names}") if not errors else SerializationError(errors[0])


def _generic(value: Any, origin: Any, args: tuple[Any, ...], path: str) -> Any:
    if origin in (list, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable):
        item = args[0] if args else Any
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected a list, got {_kind(value)}")
        return [from_plain(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
        item = args[0] if args else Any
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise _fail(path, f"expected a list, got {_kind(value)}")
        items = {from_plain(v, item, f"{path}[{i}]") for i, v in enumerate(value)}
        return frozenset(items) if origin is frozenset else items
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(path, f"expected a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if args == ((),):
            args = ()
        if args and len(args) != len(value):
            raise _fail(path, f"expected {len(args)} items, got {len(value)}")
        if not args:
            return tuple(value)
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(from_plain(v, a, f"{path}[{i}]") for i, (v, a) in pairs)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        key_tp, val_tp = (*args, Any, Any)[:2]
        if not isinstance(value, dict):
            raise _fail(path, f"expected a map, got {_kind(value)}")
        return {
            from_plain(k, key_tp, f"{path}[{k!r}]"): from_plain(v, val_tp, f"{path}[{k!r}]")
            for k, v in value.items()
        }
    if origin is type:
        return value
    if isinstance(origin, type):
        return _class(value, origin, path)
    return value


def _class(value: Any, tp: type, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path)
    if is_pydantic_model(tp):
        return _pydantic(value, tp, path)
    if issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            if isinstance(value, str) and value in tp.__members__:
                return tp.__members__[value]
            raise _fail(path, f"{value!r} is not a valid {tp.__name__}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(path, f"expected bool, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"expected int, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, f"expected float, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(path, f"expected str, got {_kind(value)}")
        return value
    if tp is bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise _fail(path, f"expected bytes, got {_kind(value)}")
        return bytes(value)
    if tp is _dt.datetime:
        return _datetime(value, path)
    if tp is _dt.date:
        if isinstance(value, _dt.datetime):
            return value.date()
        if isinstance(value, _dt.date):
            return value
        if isinstance(value, str):
            try:
                return _dt.date.fromisoformat(value)
            except ValueError:
                raise _fail(path, f"{value!r} is not an ISO-8601 date") from None
        raise _fail(path, f"expected a date, got {_kind(value)}")
    if tp is _dt.timedelta:
        if isinstance(value, _dt.timedelta):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _dt.timedelta(seconds=value)
        raise _fail(path, f"expected a number of seconds, got {_kind(value)}")
    if tp is uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        try:
            if isinstance(value, str):
                return uuid.UUID(value)
            if isinstance(value, bytes):
                return uuid.UUID(bytes=value)
        except ValueError:
            pass
        raise _fail(path, f"{value!r} is not a UUID")
    if tp is decimal.Decimal:
        if isinstance(value, decimal.Decimal):
            return value
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                return decimal.Decimal(str(value))
            except decimal.InvalidOperation:
                pass
        raise _fail(path, f"{value!r} is not a decimal number")
    if tp in (list, dict, tuple, set, frozenset):
        return _generic(value, tp, (), path)
    if isinstance(value, tp):
        return value
    raise _fail(path, f"cannot rebuild a {tp.__qualname__} from {_kind(value)}")


def _datetime(value: Any, path: str) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise _fail(path, f"{value!r} is not an ISO-8601 datetime") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.UTC)
    raise _fail(path, f"expected a datetime, got {_kind(value)}")


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp, include_extras=True)
    except Exception:
        return {}


def _dataclass(value: Any, tp: type, path: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise _fail(path, f"expected a map for {tp.__name__}, got {_kind(value)}")
    hints = _hints(tp)
    kwargs: dict[str, Any] = {}
    late: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(sub, f"missing (required by {tp.__name__})")
            continue
        rebuilt = from_plain(value[f.name], hints.get(f.name, Any), sub)
        (kwargs if f.init else late)[f.name] = rebuilt
    try:
        obj = tp(**kwargs)
    except Exception as exc:
        raise _fail(path, f"cannot build {tp.__name__}: {exc}") from None
    for name, v in late.items():
        object.__setattr__(obj, name, v)
    return obj


def _pydantic(value: Any, tp: type, path: str) -> Any:
    if isinstance(value, tp):
        return value
    try:
        return tp.model_validate(value)  # type: ignore[attr-defined]
    except Exception as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0] if errors() else {}
            loc = ".".join(str(p) for p in first.get("loc", ()))
            sub = f"{path}.{loc}" if path and loc else (loc or path)
            raise _fail(sub, f"{first.get('msg', exc)} (building {tp.__name__})") from None
        raise _fail(path, f"cannot build {tp.__name__}: {exc}") from None


# -- declared types of user code -------------------------------------------------------------------
def _resolved_hints(fn: Any) -> dict[str, Any]:
    target = fn
    if isinstance(fn, (staticmethod, classmethod)):
        target = fn.__func__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        return dict(getattr(target, "__annotations__", {}) or {})


@functools.cache
def input_type(fn: Callable[..., Any], skip: int = 1) -> Any:
    """The annotated type of ``fn``'s input parameter (the first one after ``skip`` leading
    positional parameters: the context, or ``self``), or None when it is not annotated."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return None
    if len(params) <= skip:
        return None
    hint = _resolved_hints(fn).get(params[skip].name)
    return None if hint is Any else hint


@functools.cache
def return_type(fn: Callable[..., Any]) -> Any:
    """The type ``fn`` produces: its return annotation, or for a generator orchestrator
    (``Generator[Task, Any, T]``) the generator's return type ``T``; None when unknown."""
    hint = _resolved_hints(fn).get("return")
    if hint is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (collections.abc.Generator, typing.Generator):
        args = typing.get_args(hint)
        hint = args[2] if len(args) == 3 else None
    if hint is Any or hint is None or hint is _NONE_TYPE:
        return None
    return hint


def rebuild(value: Any, tp: Any, what: str) -> Any:
    """``from_plain`` with ``what`` (e.g. "input of activity 'charge'") in the error; ``tp`` None
    leaves the value as decoded, and so does a value of None (no input at all: an operation called
    without one, a function whose input is optional by convention)."""
    if tp is None or value is None:
        return value
    try:
        return from_plain(value, tp)
    except SerializationError as exc:
        name = getattr(tp, "__name__", None) or repr(tp)
        raise SerializationError(f"cannot rebuild the {what} as {name}: {exc}") from None
