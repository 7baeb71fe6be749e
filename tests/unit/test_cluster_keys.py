"""The keys of stream reads, found locally for redis-py's cluster client (no COMMAND GETKEYS)."""

from __future__ import annotations

from durable._store.cluster_keys import stream_read_keys


def test_xread_keys_are_the_first_half_after_streams() -> None:
    args = ("XREAD", "BLOCK", 1000, "COUNT", 200, b"STREAMS", "d:{h:1}:inbox", "1-0")
    assert stream_read_keys(args) == ("d:{h:1}:inbox",)
    two = (b"XREAD", b"STREAMS", b"a", b"b", b"0-0", b"$")
    assert stream_read_keys(two) == (b"a", b"b")


def test_xreadgroup_skips_the_group_and_consumer_even_if_they_read_streams() -> None:
    args = ("XREADGROUP", "GROUP", "streams", "STREAMS", "COUNT", 10, "NOACK", "STREAMS", "k", ">")
    assert stream_read_keys(args) == ("k",)


def test_anything_else_is_left_to_redis_py() -> None:
    assert stream_read_keys(("GET", "k")) is None
    assert stream_read_keys(("XREAD", "STREAMS", "a", "b", "c")) is None  # odd: not understood
    assert stream_read_keys(("XREAD", "WHATEVER", "STREAMS", "a", "0")) is None
    assert stream_read_keys(()) is None
