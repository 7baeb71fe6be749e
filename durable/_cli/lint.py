"""``durable lint PATH...``: calls in orchestrator code that break deterministic replay.

Only orchestrator bodies are read: functions decorated with ``@<worker>.orchestrator`` (with or
without arguments) or passed to ``<worker>.add_orchestrator(...)`` in the same module, nested
functions included. Activities may do anything. A call is recognised through the module's
imports (``import datetime as dt`` then ``dt.datetime.now()``, ``from time import sleep`` then
``sleep()``), so a local variable that happens to be called ``random`` is not flagged. A line
ending in ``# durable: ignore`` is never reported.

Each finding is one line ``path:line:col: DUR0NN message (what to use instead)``; the exit code is
1 when anything is found, 0 otherwise, 2 when a path does not exist.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, HELP_WIDTH, Commands, help_formatter

IGNORE_MARK = "# durable: ignore"
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "site-packages"})


@dataclass(frozen=True, order=True)
class Rule:
    code: str
    message: str
    instead: str


DATETIME = Rule("DUR001", "reads the wall clock", "use ctx.current_utc_datetime")
TIME = Rule("DUR002", "reads the clock", "use ctx.current_utc_datetime")
SLEEP = Rule("DUR003", "sleeps", "use yield ctx.create_timer(...)")
RANDOM = Rule("DUR004", "draws random numbers", "use ctx.new_uuid() or an activity")
UUID = Rule("DUR005", "makes a random or time-based UUID", "use ctx.new_uuid()")
ENVIRON = Rule("DUR006", "reads the environment", "pass it in the input, or read it in an activity")
OPEN = Rule("DUR007", "does file I/O", "use an activity")
NETWORK = Rule("DUR008", "does network I/O", "use an activity")
CONCURRENCY = Rule(
    "DUR009",
    "runs concurrently outside the replay (threads, asyncio tasks and sleeps)",
    "use ctx.create_timer(...) or when_all(...)",
)

#: exact dotted names (after import resolution) and the rule each breaks; a name ending in ".*"
#: covers everything under it
_CALLS: dict[str, Rule] = {
    "datetime.datetime.now": DATETIME,
    "datetime.datetime.utcnow": DATETIME,
    "datetime.datetime.today": DATETIME,
    "datetime.date.today": DATETIME,
    "time.time": TIME,
    "time.time_ns": TIME,
    "time.monotonic": TIME,
    "time.monotonic_ns": TIME,
    "time.perf_counter": TIME,
    "time.sleep": SLEEP,
    "random.*": RANDOM,
    "uuid.uuid1": UUID,
    "uuid.uuid4": UUID,
    "os.getenv": ENVIRON,
    "os.environ": ENVIRON,
    "open": OPEN,
    "io.open": OPEN,
    "requests.*": NETWORK,
    "httpx.*": NETWORK,
    "urllib.*": NETWORK,
    "socket.*": NETWORK,
    "http.client.*": NETWORK,
    "aiohttp.*": NETWORK,
    "threading.*": CONCURRENCY,
    "asyncio.sleep": CONCURRENCY,
    "asyncio.create_task": CONCURRENCY,
    "asyncio.ensure_future": CONCURRENCY,
}


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    col: int
    rule: Rule
    #: the call or name as written
    name: str

    def __str__(self) -> str:
        what = f"{self.name} {self.rule.message} in an orchestrator ({self.rule.instead})"
        return f"{self.path}:{self.line}:{self.col}: {self.rule.code} {what}"


def _rule_for(dotted: str) -> Rule | None:
    rule = _CALLS.get(dotted)
    if rule is not None:
        return rule
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
        rule = _CALLS.get(".".join(parts[:n]) + ".*")
        if rule is not None:
            return rule
    return None


def _imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    names[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _is_orchestrator_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Attribute) and target.attr == "orchestrator"


def orchestrator_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions of a module that are registered as orchestrators."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    registered: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_orchestrator"
            and node.args
            and isinstance(node.args[0], ast.Name)
        ):
            registered.add(node.args[0].id)
    return [
        f
        for f in functions
        if f.name in registered or any(_is_orchestrator_decorator(d) for d in f.decorator_list)
    ]


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, imports: dict[str, str], lines: list[str]) -> None:
        self.path = path
        self.imports = imports
        self.lines = lines
        self.found: list[Finding] = []
        self._reported: set[int] = set()

    def _report(self, node: ast.expr, rule: Rule, target: ast.expr) -> None:
        line = self.lines[node.lineno - 1] if node.lineno <= len(self.lines) else ""
        if IGNORE_MARK in line:
            return
        name = ".".join(_dotted(target) or ["?"])
        if isinstance(node, ast.Call):
            name += "()"
        self.found.append(Finding(self.path, node.lineno, node.col_offset + 1, rule, name))

    def _resolve(self, node: ast.expr) -> str | None:
        parts = _dotted(node)
        if parts is None:
            return None
        root = self.imports.get(parts[0])
        if root is None:
            return "open" if parts == ["open"] else None
        return ".".join([root, *parts[1:]])

    def visit_Call(self, node: ast.Call) -> None:
        dotted = self._resolve(node.func)
        rule = _rule_for(dotted) if dotted else None
        if rule is not None:
            self._report(node, rule, node.func)
            self._mark(node.func)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check_reference(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_reference(node)

    def _check_reference(self, node: ast.Attribute | ast.Name) -> None:
        """Uses without a call: ``os.environ["X"]``, ``environ.get(...)``."""
        if id(node) in self._reported:
            return
        dotted = self._resolve(node)
        if dotted is not None and (dotted == "os.environ" or dotted.startswith("os.environ.")):
            self._report(node, ENVIRON, node)
            self._mark(node)
            return
        if isinstance(node, ast.Attribute):
            self.visit(node.value)

    def _mark(self, node: ast.expr) -> None:
        for sub in ast.walk(node):
            self._reported.add(id(sub))


def lint_source(source: str, path: str) -> list[Finding]:
    """Findings in one module's orchestrators (raises SyntaxError for a module that does not parse)."""
    tree = ast.parse(source, path)
    imports = _imports(tree)
    checker = _Checker(path, imports, source.splitlines())
    seen: set[int] = set()
    for fn in orchestrator_functions(tree):
        if id(fn) in seen:
            continue
        seen.update(id(n) for n in ast.walk(fn))
        for stmt in fn.body:
            checker.visit(stmt)
    return sorted(set(checker.found))


def python_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*.py")):
                rel = file.relative_to(path).parts
                if not any(p.startswith(".") or p in _SKIP_DIRS for p in rel[:-1]):
                    yield file
        else:
            yield path


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"durable lint: error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    found = False
    for file in python_files(paths):
        try:
            findings = lint_source(file.read_text(encoding="utf-8"), str(file))
        except SyntaxError as exc:  # a module that does not parse cannot be checked: that fails too
            print(f"{file}:{exc.lineno or 0}:{exc.offset or 0}: DUR000 cannot parse the module: {exc.msg}")
            found = True
            continue
        except (OSError, UnicodeDecodeError) as exc:
            print(f"durable lint: error: cannot read {file}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for finding in findings:
            print(finding)
        found = found or bool(findings)
    return EXIT_FAILURE if found else EXIT_OK


def register(commands: Commands) -> None:
    """Add ``durable lint``."""
    parser = commands.add_parser(
        "lint",
        help="report calls in orchestrator code that break deterministic replay",
        description=textwrap.fill(
            "Read every function registered as an orchestrator (decorated with "
            "@<worker>.orchestrator, or passed to <worker>.add_orchestrator) in the given files "
            "and folders, and report calls that make replay differ from the recorded run: clocks "
            "(datetime.now, time.time, time.monotonic), time.sleep, random, uuid1/uuid4, "
            "os.environ/os.getenv, open(), network clients (requests, httpx, urllib, socket), "
            "threading, asyncio.sleep and asyncio.create_task. Activities are not checked. "
            f"A line with '{IGNORE_MARK}' is skipped. Exit code 1 when anything is found.",
            HELP_WIDTH,
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=help_formatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="Python files or folders")
    parser.set_defaults(handler=run)
