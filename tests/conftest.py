"""Shared fixtures: a REAL redis-server (never a fake) for tests that need Redis.

* ``redis_server`` -- a fresh :class:`RedisServer` per test (kill/stop/restart it freely);
  SIGKILLed on teardown.
* ``redis_url`` -- the URL of one server shared by the whole session; tests isolate
  themselves with a unique hub name (the ``hub`` fixture).  ``--redis-url URL`` or
  ``$DURABLE_TEST_REDIS_URL`` points it at an external Redis instead.
* ``hub`` -- a unique hub name per test, ``t-<8 hex digits>``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Make ``durable`` (the repo root) and the helpers beside this file importable however
# pytest is invoked (``python -m pytest``, bare ``pytest``, any import mode).
_TESTS_DIR = Path(__file__).resolve().parent
for _path in (str(_TESTS_DIR.parent), str(_TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _redis import RedisServer  # noqa: E402

ENV_TEST_REDIS_URL = "DURABLE_TEST_REDIS_URL"
#: "1": the shared ``redis_url`` is a three-node Redis Cluster started by the fixtures
ENV_TEST_CLUSTER = "DURABLE_TEST_CLUSTER"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-url",
        action="store",
        dest="durable_test_redis_url",
        default=os.environ.get(ENV_TEST_REDIS_URL) or None,
        help=(
            "Use this external Redis for the session-wide `redis_url` fixture instead of "
            f"starting a redis-server (default: ${ENV_TEST_REDIS_URL})."
        ),
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (appendonly yes, everysec) on a free port, per test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a redis-server shared by the session (or of the external Redis if configured)."""
    external = request.config.getoption("durable_test_redis_url")
    if external:
        yield str(external)
        return
    if os.environ.get(ENV_TEST_CLUSTER) == "1":
        from _cluster import RedisClusterServers

        cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
        try:
            yield cluster.url
        finally:
            cluster.kill()
        return
    server = RedisServer(tmp_path_factory.mktemp("redis-session"))
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the Redis Cluster run, only tests that use the shared ``redis_url`` are repeated."""
    if os.environ.get(ENV_TEST_CLUSTER) != "1":
        return
    skip = pytest.mark.skip(reason="runs against its own standalone redis-server; covered by the main run")
    for item in items:
        if "redis_url" not in getattr(item, "fixturenames", ()) or item.get_closest_marker("standalone_only"):
            item.add_marker(skip)


@pytest.fixture
def hub() -> str:
    """A unique hub name for one test, so tests sharing a Redis don't see each other."""
    return f"t-{uuid.uuid4().hex[:8]}"
