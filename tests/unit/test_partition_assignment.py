"""How live workers split a hub's partitions (``durable._runtime.runtime._assignment``)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from durable._runtime.runtime import _assignment


def _workers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w-{rng.getrandbits(64):016x}" for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 31, 40])
@pytest.mark.parametrize("seed", range(5))
def test_every_partition_has_one_owner_and_no_worker_more_than_its_share(n: int, seed: int) -> None:
    workers = _workers(n, seed)
    owners = _assignment(32, workers)
    assert sorted(owners) == list(range(32))
    counts = Counter(owners.values())
    assert set(counts) <= set(workers)
    # each worker holds its share, floor(P / n), or one more; nobody is left without one while n <= P
    assert max(counts.values()) == -(-32 // n)
    assert len(counts) == min(n, 32) and min(counts.values()) == max(1, 32 // n)


def test_every_worker_computes_the_same_answer_whatever_the_order() -> None:
    workers = _workers(8, 1)
    shuffled = list(reversed(workers))
    assert _assignment(32, workers) == _assignment(32, shuffled)


def test_a_worker_joining_moves_few_partitions() -> None:
    workers = _workers(8, 2)
    before = _assignment(32, workers)
    after = _assignment(32, [*workers, "w-new"])
    moved = [p for p in before if before[p] != after[p]]
    assert 3 <= len(moved) <= 8  # the newcomer's share (3-4) plus a few knock-on moves, not a reshuffle
    assert sum(1 for w in after.values() if w == "w-new") == len([p for p in moved if after[p] == "w-new"])
