"""``durable lint``: every listed call in an orchestrator is reported on its line; activities,
ignored lines and clean modules are not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from durable.cli import main

REPO = Path(__file__).resolve().parents[2]

#: each line that must be reported ends with "# expect DURnnn"
MODULE = """
import asyncio
import datetime as dt
import os
import random
import socket
import threading
import time
import uuid
from datetime import datetime
from os import environ
from random import choice
from time import sleep as nap
from urllib.request import urlopen

import httpx
import requests

from durable import Worker

worker = Worker()


@worker.orchestrator
def decorated(ctx, order):
    a = datetime.now()  # expect DUR001
    b = dt.datetime.utcnow()  # expect DUR001
    c = datetime.today()  # expect DUR001
    d = time.time()  # expect DUR002
    e = time.monotonic()  # expect DUR002
    time.sleep(1)  # expect DUR003
    nap(2)  # expect DUR003
    f = random.randint(1, 6)  # expect DUR004
    g = choice([1, 2])  # expect DUR004
    h = uuid.uuid4()  # expect DUR005
    i = uuid.uuid1()  # expect DUR005
    j = os.environ["HOME"]  # expect DUR006
    k = os.getenv("HOME")  # expect DUR006
    m = environ.get("HOME")  # expect DUR006
    with open("notes.txt") as fh:  # expect DUR007
        fh.read()
    requests.get("https://example.com")  # expect DUR008
    httpx.post("https://example.com")  # expect DUR008
    urlopen("https://example.com")  # expect DUR008
    socket.create_connection(("example.com", 80))  # expect DUR008
    threading.Thread(target=print).start()  # expect DUR009
    quiet = time.time()  # durable: ignore
    random = [3, 4]  # a local name, not the module
    yield ctx.call_activity("charge", input=order)


@worker.orchestrator(name="flow", version="2")
async def decorated_with_arguments(ctx, order):
    await asyncio.sleep(1)  # expect DUR009
    asyncio.create_task(ctx.call_activity("x"))  # expect DUR009

    def helper():
        return time.time()  # expect DUR002

    return helper()


def registered(ctx, order):
    return uuid.uuid4().hex  # expect DUR005


worker.add_orchestrator(registered, name="registered", version="1")


@worker.activity
def charge(ctx, order):
    return requests.post("https://pay.example.com", json=order).json(), time.time(), random.random()


def not_an_orchestrator():
    return datetime.now()
"""


def test_each_listed_call_is_reported_on_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "app.py"
    path.write_text(MODULE)
    expected = {
        (n, m.group(1))
        for n, line in enumerate(MODULE.splitlines(), 1)
        if (m := re.search(r"# expect (DUR\d+)", line))
    }
    assert main(["lint", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    found = set()
    for line in lines:
        match = re.fullmatch(rf"{re.escape(str(path))}:(\d+):(\d+): (DUR\d{{3}}) (.+) \(.+\)", line)
        assert match, line
        found.add((int(match.group(1)), match.group(3)))
    assert found == expected
    assert any(
        "datetime.now() reads the wall clock" in line and "ctx.current_utc_datetime" in line for line in lines
    )
    assert any("uuid.uuid4() " in line and "ctx.new_uuid()" in line for line in lines)


def test_clean_modules_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(REPO / "orchestrations"), str(REPO / "tests" / "fixtures")]) == 0
    assert capsys.readouterr().out == ""


def test_a_missing_path_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path / "nope.py")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_module_that_does_not_parse_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.py").write_text("def (:\n")
    assert main(["lint", str(tmp_path)]) == 1
    assert "DUR000 cannot parse the module" in capsys.readouterr().out
