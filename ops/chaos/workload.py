"""The chaos workload: seeded orchestration programs, their interpreter, and their predicted shape.

A *program* is a small JSON-like spec interpreted by one orchestrator (:func:`program`), so the
worker app needs no per-shape code and the harness can predict, without running the engine, what a
fault-free run must produce (:func:`predict`): the output, the (kind, name) sequence of the
scheduling events of the last execution, the sub-orchestrations it starts and every activity it
schedules (by a *logical id* carried in the activity input, independent of the engine's task ids).

Steps (``spec["steps"]``), each a list:

``["act", v]``                 one activity
``["chain", k, v]``            k activities in sequence, each fed the previous result
``["fan", k, v]``              ``when_all`` of k activities (fan-out/fan-in)
``["timer", s]``               a durable timer of s seconds
``["event", name]``            wait for an external event (the harness raises it)
``["event_to", name, arrives, s]``
                               ``when_any`` of the event and an s-second timer; when ``arrives``
                               the harness raises the event and the timer is long (it never wins),
                               otherwise nobody raises it and the timer wins
``["sub", steps]``             a sub-orchestration running ``steps`` (nest for depth)
``["big_in", n, seed]``        an activity whose input is n pseudo-random bytes (near the cap)
``["big_out", n, seed]``       an activity whose result is n pseudo-random bytes
``["status", v]``              ``set_custom_status``
``["bank", accounts, deltas]`` critical section over 2-4 entity accounts, adding ``deltas``
                               (sum 0); only generated with ``entities=True``

``spec["gens"] = G`` makes the program ``continue_as_new`` G times (a loop); the final output is
``{"gens": [output of generation 0, ..., output of generation G]}``.

Adding a step kind means: a branch in :func:`program`, the same branch in :func:`_predict_steps`,
and a family in :data:`FAMILIES` that uses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ORCHESTRATOR = "chaos_program"
ACTIVITY = "chaos_work"
BIG_IN = "chaos_big_in"
BIG_OUT = "chaos_big_out"
ACCOUNT = "chaos_account"
ACCOUNT_START = 1000  # the balance of an account nobody touched yet
LONG_TIMER_S = 900  # the timer of an event_to whose event arrives: never expected to win

# History event kinds the harness reads (the engine's documented names).
TASK_SCHEDULED = "TaskScheduled"
TIMER_CREATED = "TimerCreated"
SUB_CREATED = "SubOrchestrationCreated"
LOCK_REQUESTED = "EntityLockRequested"
ENTITY_CALLED = "EntityCalled"
ENTITY_UNLOCKED = "EntityUnlocked"


# -- deterministic values shared by the interpreter, the activities and the predictor -----------
def activity_value(logical_id: str, v: int) -> int:
    """What the chaos activity returns for (id, v): deterministic, different for every id."""
    return (v * 31 + zlib.crc32(logical_id.encode())) % 1_000_003


def event_value(instance_id: str, name: str) -> int:
    """The data the harness raises with event ``name`` on ``instance_id``."""
    return zlib.crc32(f"{instance_id}/{name}".encode()) % 1_000_003


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def child_id(instance_id: str, gen: int, step: int) -> str:
    return f"{instance_id}.g{gen}s{step}"


def logical(instance_id: str, gen: int, step: int, k: int = 0) -> str:
    return f"{instance_id}|g{gen}|s{step}|k{k}"


# -- the interpreter (runs inside the engine) ---------------------------------------------------
def program(ctx: Any, spec: dict[str, Any]) -> Any:
    """The one chaos orchestrator: interprets ``spec`` (see the module docstring)."""
    from durable import when_all, when_any  # imported here so predict() needs no engine

    iid = ctx.instance_id
    gen = int(spec.get("gen", 0))
    out: list[Any] = []
    for i, step in enumerate(spec["steps"]):
        kind = step[0]
        if kind == "act":
            out.append((yield _call(ctx, logical(iid, gen, i), step[1])))
        elif kind == "chain":
            value = step[2]
            for k in range(step[1]):
                value = yield _call(ctx, logical(iid, gen, i, k), value)
            out.append(value)
        elif kind == "fan":
            results = yield when_all(
                [_call(ctx, logical(iid, gen, i, k), step[2] + k) for k in range(step[1])]
            )
            out.append(sum(results))
        elif kind == "timer":
            yield ctx.create_timer(dt.timedelta(seconds=step[1]))
            out.append("t")
        elif kind == "event":
            out.append((yield ctx.wait_for_external_event(step[1])))
        elif kind == "event_to":
            event = ctx.wait_for_external_event(step[1])
            timeout = ctx.create_timer(dt.timedelta(seconds=step[3]))
            winner = yield when_any([event, timeout])
            out.append(event.get_result() if winner is event else "timeout")
        elif kind == "sub":
            child = {"steps": step[1]}
            out.append(
                (
                    yield ctx.call_sub_orchestrator(
                        ORCHESTRATOR, input=child, instance_id=child_id(iid, gen, i)
                    )
                )
            )
        elif kind == "big_in":
            data = {"id": logical(iid, gen, i), "blob": blob(step[1], step[2])}
            out.append((yield ctx.call_activity(BIG_IN, input=data)))
        elif kind == "big_out":
            data = {"id": logical(iid, gen, i), "n": step[1], "seed": step[2]}
            result = yield ctx.call_activity(BIG_OUT, input=data)
            out.append([len(result), digest(result)])
        elif kind == "status":
            ctx.set_custom_status({"step": i, "v": step[1]})
        elif kind == "bank":
            accounts = [_account(a) for a in step[1]]
            with (yield ctx.lock_entities(accounts)):
                for account, delta in zip(accounts, step[2], strict=True):
                    yield ctx.call_entity(account, "add", input={"delta": delta, "ref": logical(iid, gen, i)})
            out.append("moved")
        else:
            raise ValueError(f"unknown step {kind!r}")
    if gen < int(spec.get("gens", 0)):
        ctx.continue_as_new({**spec, "gen": gen + 1, "acc": [*spec.get("acc", []), out]})
        return None
    return {"gens": [*spec.get("acc", []), out]}


def _call(ctx: Any, logical_id: str, v: int) -> Any:
    return ctx.call_activity(ACTIVITY, input={"id": logical_id, "v": v})


def _account(key: str) -> Any:
    from durable import EntityId

    return EntityId(ACCOUNT, key)


# -- the predictor (pure; never touches the engine) ----------------------------------------------
@dataclass
class Prediction:
    """What a fault-free run of one instance must produce."""

    output: Any
    shape: list[tuple[str, str | None]]  # (kind, name) of the scheduling events of the last execution
    activities: list[str]  # logical ids of every activity scheduled, all generations
    children: list[tuple[str, dict[str, Any]]]  # (instance id, spec) of every sub-orchestration
    events: list[tuple[str, int]]  # (name, data) of external events the harness must raise
    balances: dict[str, tuple[int, int]] = field(default_factory=dict)  # account -> (sum of deltas, adds)


def predict(instance_id: str, spec: dict[str, Any]) -> Prediction:
    gens = int(spec.get("gens", 0))
    outputs: list[Any] = []
    pred = Prediction(None, [], [], [], [])
    for gen in range(gens + 1):
        pred.shape = []
        outputs.append(_predict_steps(instance_id, gen, spec["steps"], pred))
    pred.output = {"gens": outputs}
    return pred


def _predict_steps(iid: str, gen: int, steps: list[Any], pred: Prediction) -> list[Any]:
    out: list[Any] = []

    def act(logical_id: str, v: int, name: str = ACTIVITY) -> int:
        pred.shape.append((TASK_SCHEDULED, name))
        pred.activities.append(logical_id)
        return activity_value(logical_id, v)

    for i, step in enumerate(steps):
        kind = step[0]
        if kind == "act":
            out.append(act(logical(iid, gen, i), step[1]))
        elif kind == "chain":
            value = step[2]
            for k in range(step[1]):
                value = act(logical(iid, gen, i, k), value)
            out.append(value)
        elif kind == "fan":
            out.append(sum(act(logical(iid, gen, i, k), step[2] + k) for k in range(step[1])))
        elif kind == "timer":
            pred.shape.append((TIMER_CREATED, None))
            out.append("t")
        elif kind == "event":
            pred.events.append((step[1], event_value(iid, step[1])))
            out.append(event_value(iid, step[1]))
        elif kind == "event_to":
            pred.shape.append((TIMER_CREATED, None))
            if step[2]:
                pred.events.append((step[1], event_value(iid, step[1])))
                out.append(event_value(iid, step[1]))
            else:
                out.append("timeout")
        elif kind == "sub":
            cid = child_id(iid, gen, i)
            pred.shape.append((SUB_CREATED, ORCHESTRATOR))
            child_spec = {"steps": step[1]}
            pred.children.append((cid, child_spec))
            out.append(predict(cid, child_spec).output)
        elif kind == "big_in":
            act(logical(iid, gen, i), 0, BIG_IN)
            out.append(_big_in_result(step[1], step[2]))
        elif kind == "big_out":
            act(logical(iid, gen, i), 0, BIG_OUT)
            data = blob(step[1], step[2])
            out.append([len(data), digest(data)])
        elif kind == "status":
            pass
        elif kind == "bank":
            pred.shape.append((LOCK_REQUESTED, None))
            for account, delta in zip(step[1], step[2], strict=True):
                pred.shape.append((ENTITY_CALLED, "add"))
                total, ops = pred.balances.get(account, (0, 0))
                pred.balances[account] = (total + delta, ops + 1)
            pred.shape.append((ENTITY_UNLOCKED, None))
            out.append("moved")
        else:
            raise ValueError(f"unknown step {kind!r}")
    return out


def _big_in_result(n: int, seed: int) -> dict[str, Any]:
    return {"n": n, "sha": digest(blob(n, seed))}


def big_in_result(data: dict[str, Any]) -> dict[str, Any]:
    """The BIG_IN activity's result for its input."""
    return {"n": len(data["blob"]), "sha": digest(data["blob"])}


# -- the seeded generator -----------------------------------------------------------------------
@dataclass
class Planned:
    """One top-level instance of the workload."""

    instance_id: str
    family: str
    spec: dict[str, Any]
    start_at: float  # seconds after the load starts
    event_delays: dict[str, float]  # event name -> seconds after the start at which to raise it


Family = Callable[[random.Random], dict[str, Any]]


def _v(rng: random.Random) -> int:
    return rng.randint(0, 999)


def _chain(rng: random.Random) -> dict[str, Any]:
    return {"steps": [["chain", rng.randint(5, 10), _v(rng)]]}


def _fanout(rng: random.Random) -> dict[str, Any]:
    return {"steps": [["act", _v(rng)], ["fan", 100, _v(rng)], ["act", _v(rng)]]}


def _timers(rng: random.Random) -> dict[str, Any]:
    return {
        "steps": [
            ["act", _v(rng)],
            ["timer", rng.randint(1, 6)],
            ["act", _v(rng)],
            ["timer", rng.randint(1, 3)],
        ]
    }


def _event(rng: random.Random) -> dict[str, Any]:
    return {"steps": [["act", _v(rng)], ["event", "approval"], ["act", _v(rng)]]}


def _event_timeout(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.5:
        wait = ["event_to", "reply", True, LONG_TIMER_S]
    else:
        wait = ["event_to", "reply", False, rng.randint(1, 4)]
    return {"steps": [["act", _v(rng)], wait, ["act", _v(rng)]]}


def _tree(rng: random.Random) -> dict[str, Any]:
    """Sub-orchestrations three deep: root -> child -> grandchild -> great-grandchild."""
    level3 = [["chain", 3, _v(rng)]]
    level2 = [["act", _v(rng)], ["sub", level3], ["fan", rng.randint(2, 6), _v(rng)]]
    level1 = [["fan", 5, _v(rng)], ["sub", level2]]
    return {"steps": [["act", _v(rng)], ["sub", level1], ["sub", [["act", _v(rng)]]]]}


def _loop(rng: random.Random) -> dict[str, Any]:
    return {
        "steps": [["act", _v(rng)], ["status", _v(rng)], ["timer", 1], ["chain", 2, _v(rng)]],
        "gens": rng.randint(2, 5),
    }


def _big(rng: random.Random) -> dict[str, Any]:
    n = rng.randint(1_400_000, 1_600_000)  # the cap is 2 MB per payload
    return {"steps": [["big_in", n, rng.randint(0, 2**31)], ["big_out", n, rng.randint(0, 2**31)]]}


def _mixed(rng: random.Random) -> dict[str, Any]:
    steps: list[Any] = []
    for _ in range(rng.randint(3, 7)):
        kind = rng.choice(["act", "chain", "fan", "timer", "status", "sub"])
        if kind == "act":
            steps.append(["act", _v(rng)])
        elif kind == "chain":
            steps.append(["chain", rng.randint(2, 4), _v(rng)])
        elif kind == "fan":
            steps.append(["fan", rng.randint(2, 20), _v(rng)])
        elif kind == "timer":
            steps.append(["timer", rng.randint(1, 3)])
        elif kind == "status":
            steps.append(["status", _v(rng)])
        else:
            steps.append(["sub", [["act", _v(rng)], ["fan", rng.randint(2, 5), _v(rng)]]])
    return {"steps": steps}


def _bank_family(accounts: int) -> Family:
    def bank(rng: random.Random) -> dict[str, Any]:
        steps: list[Any] = []
        for _ in range(rng.randint(1, 3)):
            keys = sorted(rng.sample([f"a{n:02d}" for n in range(accounts)], rng.randint(2, 4)))
            deltas = [rng.randint(-50, 50) for _ in keys[:-1]]
            deltas.append(-sum(deltas))  # money moves, the total stays
            steps.append(["bank", keys, deltas])
            steps.append(["act", _v(rng)])
        return {"steps": steps}

    return bank


#: family name -> (weight, generator)
FAMILIES: dict[str, tuple[int, Family]] = {
    "chain": (20, _chain),
    "fanout": (8, _fanout),
    "timers": (12, _timers),
    "event": (10, _event),
    "event_timeout": (10, _event_timeout),
    "tree": (10, _tree),
    "loop": (10, _loop),
    "big": (1, _big),
    "mixed": (19, _mixed),
}


def generate(
    seed: int, count: int, window_s: float, *, entities: bool = False, accounts: int = 8
) -> list[Planned]:
    """``count`` top-level instances starting over ``window_s`` seconds; the same for the same seed."""
    rng = random.Random(seed)
    families = dict(FAMILIES)
    if entities:
        families["bank"] = (15, _bank_family(accounts))
    names = sorted(families)
    weights = [families[n][0] for n in names]
    planned = []
    for n in range(count):
        family = rng.choices(names, weights)[0]
        spec = families[family][1](rng)
        iid = f"c{seed}-{n:05d}-{family}"
        start = rng.uniform(0, window_s)
        delays = {name: rng.uniform(0, 8) for name, _ in predict(iid, spec).events}
        planned.append(Planned(iid, family, spec, start, delays))
    if count and not any(p.family == "big" for p in planned):
        # always exercise payloads near the cap at least once
        spec = _big(rng)
        planned.append(Planned(f"c{seed}-{count:05d}-big", "big", spec, rng.uniform(0, window_s), {}))
    planned.sort(key=lambda p: p.start_at)
    return planned
