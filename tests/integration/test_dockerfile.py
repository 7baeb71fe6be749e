"""The Dockerfile, without a container daemon: every ``COPY`` source exists, and its install steps
work when replayed in a temporary folder with the repository as the build context."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    command: str  # upper-case: COPY, RUN, ...
    arguments: str
    line: int


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        command, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(command.upper(), arguments.strip(), start))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def words(instruction: Instruction) -> list[str]:
    """The arguments of an instruction, from its JSON (exec) form or its shell form."""
    if instruction.arguments.startswith("["):
        value = json.loads(instruction.arguments)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return shlex.split(instruction.arguments)


def copy_parts(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY, without its --flags."""
    parts = [w for w in words(instruction) if not w.startswith("--")]
    assert len(parts) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
    return parts[:-1], parts[-1]


def _instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def _matches(source: str) -> list[Path]:
    if glob.has_magic(source):
        return [Path(p) for p in sorted(glob.glob(str(REPO / source)))]
    path = REPO / source
    return [path] if path.exists() else []


# ------------------------------------------------------------------------------------------------
# the parser itself


def test_parser_joins_continuations_and_reads_both_forms() -> None:
    text = 'FROM x\n# note\nRUN a \\\n    # inside\n    && b\nCMD ["worker", "m:w"]\ncopy a* b ./\n'
    parsed = parse(text)
    assert [(i.command, i.line) for i in parsed] == [("FROM", 1), ("RUN", 3), ("CMD", 6), ("COPY", 7)]
    assert re.sub(r"\s+", " ", parsed[1].arguments) == "a && b"
    assert words(parsed[2]) == ["worker", "m:w"]
    assert copy_parts(parsed[3]) == (["a*", "b"], "./")


# ------------------------------------------------------------------------------------------------
# the Dockerfile


def test_every_copy_source_exists_in_the_repository() -> None:
    copies = [i for i in _instructions() if i.command == "COPY"]
    assert copies, "the Dockerfile copies nothing"
    for instruction in copies:
        assert "--from" not in instruction.arguments, "multi-stage copies are not checked here"
        sources, _ = copy_parts(instruction)
        for source in sources:
            if not glob.has_magic(source):
                assert (REPO / source).exists(), f"line {instruction.line}: COPY source {source!r} is missing"
        # a wildcard may match nothing, but every COPY must copy something
        assert any(_matches(s) for s in sources), f"line {instruction.line}: COPY {sources} matches nothing"


def _pip_commands(run: Instruction) -> list[list[str]]:
    """The ``pip install`` commands of a RUN (shell form, joined with ``&&`` or ``;``)."""
    commands = []
    for segment in re.split(r"&&|;", run.arguments):
        argv = shlex.split(segment)
        if argv[:1] in (["pip"], ["pip3"]) and argv[1:2] == ["install"]:
            commands.append(argv[2:])
        elif argv[:3] == ["python", "-m", "pip"] and argv[3:4] == ["install"]:
            commands.append(argv[4:])
    return commands


def _isolated_build_needed() -> bool:
    """Whether pip must build in an isolated environment (it installs setuptools and wheel there,
    from the configured indexes): only when this interpreter cannot build the project itself."""
    try:
        setuptools = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return True
    if setuptools >= (70, 1):  # bdist_wheel is built in
        return False
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return True
    return setuptools < (68, 0)


def _dependency_dirs() -> list[str]:
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.mark.slow
def test_the_image_build_steps_install_a_working_worker(tmp_path: Path) -> None:
    """Replay WORKDIR, COPY and the pip install steps in order into a temporary /app (packages go to
    a --target folder; no dependency is downloaded), then check what the image would run."""
    instructions = _instructions()
    app = tmp_path / "app"  # stands for the image's WORKDIR
    target = tmp_path / "site-packages"
    workdir: PurePosixPath | None = None
    env_vars: dict[str, str] = {}
    pip_steps = 0
    for instruction in instructions:
        if instruction.command == "WORKDIR":
            workdir = PurePosixPath(instruction.arguments)
            app.mkdir(parents=True, exist_ok=True)
        elif instruction.command == "ENV":
            env_vars.update(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.arguments)))
        elif instruction.command == "COPY":
            assert workdir is not None, f"line {instruction.line}: COPY before WORKDIR"
            sources, destination = copy_parts(instruction)
            dest = app / destination
            for source in sources:
                for path in _matches(source):
                    if path.is_dir():
                        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                        shutil.copytree(path, dest, ignore=ignore, dirs_exist_ok=True)
                    else:
                        dest.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, dest / path.name)
        elif instruction.command == "RUN":
            for arguments in _pip_commands(instruction):
                pip_steps += 1
                command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "-q"]
                command += ["--no-deps", "--target", str(target)]
                if not _isolated_build_needed():
                    command.append("--no-build-isolation")
                done = subprocess.run(
                    command + arguments, cwd=app, capture_output=True, text=True, timeout=600
                )
                assert done.returncode == 0, f"line {instruction.line}: {done.stdout}{done.stderr}"
    assert pip_steps, "the Dockerfile installs nothing with pip"
    assert workdir is not None
    assert (target / "durable" / "__init__.py").is_file()
    assert (target / "durable" / "_ops" / "static" / "dashboard.html").is_file()  # package data

    # the image's environment: its PYTHONPATH (under the WORKDIR), then the installed packages
    image_path = [
        str(app / PurePosixPath(p).relative_to(workdir)) if PurePosixPath(p).is_relative_to(workdir) else p
        for p in env_vars.get("PYTHONPATH", "").split(":")
        if p
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["PYTHONPATH"] = os.pathsep.join([*image_path, str(target), *_dependency_dirs()])
    entrypoint = next(words(i) for i in instructions if i.command == "ENTRYPOINT")
    cmd = next(words(i) for i in instructions if i.command == "CMD")
    assert entrypoint == ["durable"] and cmd[0] == "worker"
    script = target / "bin" / "durable"
    assert script.is_file(), "the console script of the entrypoint is not installed"
    helped = subprocess.run(
        [str(script), "worker", "--help"], cwd=app, env=env, capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    # the default CMD's application, and the other sample app the image ships, load as workers
    apps = [cmd[1], "entities:worker"]
    code = (
        "import sys\n"
        "from durable.cli import load_worker\n"
        "for spec in sys.argv[1:]:\n"
        "    worker = load_worker(spec)\n"
        "    module = sys.modules[spec.partition(':')[0]]\n"
        "    print(spec, type(worker).__name__, module.__file__)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, *apps], cwd=app, env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stderr
    lines = loaded.stdout.splitlines()
    assert len(lines) == len(apps)
    for spec, line in zip(apps, lines, strict=True):
        name, kind, origin = line.split(" ", 2)
        assert (name, kind) == (spec, "Worker")
        assert Path(origin).is_relative_to(app), f"{spec} was not loaded from the image's /app: {origin}"
