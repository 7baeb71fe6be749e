"""The small RESP encoder matches redis-py's for every argument type the store sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from durable._store import resp
from durable._store.resp import pack_command

args = st.lists(
    st.one_of(st.binary(max_size=100), st.text(max_size=50), st.integers(-(2**62), 2**62)), max_size=30
)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into a failure
@given(args)
def test_matches_redis_py(values: list[bytes | str | int]) -> None:
    reference = b"".join(Connection().pack_command(b"EVALSHA", *values))
    assert pack_command(b"EVALSHA", *values) == reference
    assert resp._pack((b"EVALSHA", *values)) == reference  # the encoder used without hiredis


def test_what_hiredis_refuses_is_encoded_in_python() -> None:
    """hiredis takes no bool: the Python encoder writes it as before (and still refuses None)."""
    assert pack_command(b"SET", "k", True) == resp._pack((b"SET", "k", True))
    with pytest.raises(TypeError):
        pack_command(b"SET", "k", None)
