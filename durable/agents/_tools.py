"""Tools: plain Python functions an agent's model may call, each run as a durable activity.

``@tool`` reads the function's signature and docstring once, at decoration time, and builds the
JSON schema the model sees (the OpenAI "function" shape: name, description, parameters). The
decorated object still calls the function directly, so tools stay ordinary, testable functions.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from durable import ActivityContext, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

#: Activity names of tools start with this (tools are shared by every agent that lists them).
TOOL_ACTIVITY_PREFIX = "agent-tool:"

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SECTION_RE = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_OTHER_SECTION_RE = re.compile(
    r"^\s*(Returns?|Raises|Yields|Examples?|Notes?|See Also|Attributes)\s*:\s*$", re.IGNORECASE
)
_ARG_RE = re.compile(r"^\s*\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_RE = re.compile(r"^\s*:param\s+(?:[\w\[\], ]+\s+)?(\w+)\s*:\s*(.*)$")


class Tool(Generic[P, R]):
    """A function the model may call; made by :func:`tool`. Calling it calls the function."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@tool needs a function, got {type(fn).__qualname__}")
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", ""))
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid tool name {self.name!r}: use 1 to 64 letters, digits, '_' or '-'")
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description = description if description is not None else summary
        self.requires_approval = requires_approval
        self.retry_policy = retry_policy
        self.parameters, self._context_param = _parameters_schema(fn, arg_docs)
        self.activity_name = TOOL_ACTIVITY_PREFIX + self.name
        self.activity = self._make_activity()
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        approval = ", requires_approval=True" if self.requires_approval else ""
        return f"<tool {self.name}{approval}>"

    def schema(self) -> dict[str, Any]:
        """What the model sees: ``{"name", "description", "parameters"}`` (JSON schema)."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    # -- the activity ----------------------------------------------------------------------------
    def _kwargs(self, ctx: ActivityContext, call: Mapping[str, Any]) -> dict[str, Any]:
        arguments = call.get("arguments")
        if not isinstance(arguments, Mapping):
            raise TypeError(f"the arguments of tool {self.name!r} must be an object, not {arguments!r:.80}")
        kwargs = dict(arguments)
        if self._context_param is not None:
            kwargs.pop(self._context_param, None)  # never taken from the model
            key = str(call.get("key") or ctx.idempotency_key)
            kwargs[self._context_param] = ctx._with_key(key)
        return kwargs

    def _make_activity(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = self.fn
        if inspect.iscoroutinefunction(fn):

            async def run_tool_async(ctx: ActivityContext, call: dict[str, Any]) -> Any:
                return to_json_value(await fn(**self._kwargs(ctx, call)))

            return run_tool_async

        def run_tool(ctx: ActivityContext, call: dict[str, Any]) -> Any:
            return to_json_value(fn(**self._kwargs(ctx, call)))

        return run_tool


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    retry_policy: RetryPolicy | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...
def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
    retry_policy: RetryPolicy | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Make a function a tool: ``@tool`` or ``@tool(requires_approval=True, ...)``.

    The function's name is the tool's name (``name=`` overrides it), its docstring's first part is
    the description (``description=``), and its parameters become the JSON schema's properties:
    the annotations give the types (``str``, ``int``, ``float``, ``bool``, lists, dicts,
    ``Literal``, enums, ``X | None``, ``Annotated[X, "description"]``), parameters without a
    default are required, and an ``Args:`` section (or ``:param x:`` lines) describes them.

    A tool runs as an activity: at least once, its result applied once. A parameter annotated
    :class:`~durable.ActivityContext` is not shown to the model; it receives the activity's
    context whose ``idempotency_key`` identifies the tool call (the same on every delivery and
    retry of that call), for the systems the tool changes. ``requires_approval=True``: the call
    runs only after a person approves it (:meth:`Agent.approve`). ``retry_policy``: how a failing
    call is retried before its failure goes back to the model as an ``"error"``.
    """

    def wrap(f: Callable[P, R]) -> Tool[P, R]:
        return Tool(
            f,
            name=name,
            description=description,
            requires_approval=requires_approval,
            retry_policy=retry_policy,
        )

    return wrap(fn) if fn is not None else wrap


# -- docstrings ------------------------------------------------------------------------------------


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, parameter descriptions) from a Google-style or Sphinx-style docstring."""
    summary: list[str] = []
    args: dict[str, str] = {}
    current: str | None = None
    in_args = False
    in_other = False
    indent = 0
    for line in doc.splitlines():
        sphinx = _SPHINX_RE.match(line)
        if sphinx:
            current = sphinx.group(1)
            args[current] = sphinx.group(2).strip()
            in_args, in_other = False, False
            continue
        if _SECTION_RE.match(line):
            in_args, in_other, current = True, False, None
            continue
        if _OTHER_SECTION_RE.match(line) or line.strip().startswith(":"):
            in_args, in_other, current = False, True, None
            continue
        if in_args:
            if not line.strip():
                current = None
                continue
            this_indent = len(line) - len(line.lstrip())
            arg = _ARG_RE.match(line)
            if arg and (current is None or this_indent <= indent):
                current, indent = arg.group(1), this_indent
                args[current] = arg.group(3).strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
            continue
        if current is not None and line.strip():  # a continued :param line
            args[current] = f"{args[current]} {line.strip()}".strip()
            continue
        if not in_other:
            summary.append(line)
    return "\n".join(summary).strip(), args


# -- JSON schema -------------------------------------------------------------------------------------


def _parameters_schema(fn: Callable[..., Any], docs: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The parameters' JSON schema and the name of the context parameter (if any)."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable string annotations: describe those parameters as "any"
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    context_param: str | None = None
    open_ended = False
    for param in signature.parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if annotation is ActivityContext:
            context_param = param.name
            continue
        if param.kind == param.VAR_KEYWORD:
            open_ended = True
            continue
        if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
            raise TypeError(
                f"tool {getattr(fn, '__name__', fn)!r}: parameter {param.name!r} cannot be passed by "
                "keyword; the model names every argument"
            )
        schema = json_schema(annotation)
        if param.name in docs and docs[param.name] and "description" not in schema:
            schema = {**schema, "description": docs[param.name]}
        if param.default is param.empty:
            required.append(param.name)
        elif _is_json(param.default):
            schema = {**schema, "default": param.default}
        properties[param.name] = schema
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if not open_ended:
        out["additionalProperties"] = False
    return out, context_param


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


_SIMPLE: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one Python type annotation (``{}`` means any value)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return {}
    if annotation is None or annotation is type(None):
        return {"type": "null"}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_schema([member.value for member in annotation])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = json_schema(args[0])
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**schema, "description": text} if text else schema
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        nullable = len(options) < len(args)
        if len(options) == 1:
            schema = json_schema(options[0])
            if not nullable:
                return schema
            kind = schema.get("type")
            if isinstance(kind, str):
                return {**schema, "type": [kind, "null"]}
            return {"anyOf": [schema, {"type": "null"}]} if schema else {}
        return {"anyOf": [json_schema(a) for a in args]}
    container = origin or annotation
    if isinstance(container, type):
        if issubclass(container, (str, bytes)):
            return {"type": "string"}
        if issubclass(container, Mapping) or (dataclasses.is_dataclass(container) and origin is None):
            schema = {"type": "object"}
            if origin is not None and len(args) == 2 and json_schema(args[1]):
                schema["additionalProperties"] = json_schema(args[1])
            return schema
        if issubclass(container, (Sequence, set, frozenset)):
            schema = {"type": "array"}
            if args and not (len(args) == 2 and args[1] is Ellipsis) and container is tuple:
                schema["prefixItems"] = [json_schema(a) for a in args]
            elif args:
                schema["items"] = json_schema(args[0])
            return schema
    return {}


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"enum": values}
    kinds = {_SIMPLE.get(type(v)) for v in values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def to_json_value(value: Any) -> Any:
    """A tool's result as plain JSON data (what the model is shown; values JSON cannot hold become
    strings, tuples become lists)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))
