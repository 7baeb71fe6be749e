"""W7's rows and targets, and the model of the limit, for ``docs/performance.md``.

Everything here is computed from the figures measured in the same run (medians over the
repetitions): nothing is typed in except the stated assumptions about the target machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from benchlib import median

#: a value accessor: (workload, metric) -> the list of samples, or None
Values = Callable[[str, str], list[float] | None]

#: the machine the model answers for
MODEL_WORKER_CORES = 16
MODEL_NODES = 3
#: a Redis node executes commands on one thread: its budget is one core
NODE_CORES = 1.0
#: bytes/s each way of one 10 GbE link
LINK_BYTES_S = 1.25e9
#: W7's tolerance: total CPU per step of N processes (or the cluster) against 1 (standalone)
SCALE_TOLERANCE = 1.15


def _labels(sizes: Any) -> list[tuple[str, str]]:
    out = [(f"{n}w", f"{n} worker process{'es' if n > 1 else ''}") for n in sizes.w7_workers]
    if getattr(sizes, "w7_cluster", False):
        out.append(("cluster", f"1 worker process on a {MODEL_NODES}-node Redis Cluster"))
    return out


def w7_rows(sizes: Any) -> list[tuple[str, str, str, str]]:
    rows = []
    for label, what in _labels(sizes):
        rows.append((f"W7:{label}", "steps_s", f"W7 W1 with {what}: steps/s", "higher"))
        rows.append(
            (f"W7:{label}", "cpu_ms_per_step", f"W7 ... {label}: CPU ms per step, workers + Redis", "lower")
        )
    return rows


def _med(values: Values, workload: str, metric: str) -> float:
    return median(values(workload, metric) or [])


def _f(v: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.{digits}f}"


def w7_targets(values: Values, sizes: Any) -> list[tuple[str, str, str]]:
    out = []
    one = _med(values, "W7:1w", "cpu_ms_per_step")
    for n in [n for n in sizes.w7_workers if n > 1]:
        v = _med(values, f"W7:{n}w", "cpu_ms_per_step")
        ok = None if math.isnan(v) or math.isnan(one) else v / one <= SCALE_TOLERANCE
        out.append(
            (
                f"W7 total CPU per step with {n} workers within 15% of 1 worker",
                "n/a" if ok is None else ("met" if ok else "not met"),
                f"{_f(v)} vs {_f(one)} ms = {v / one:.2f}x" if ok is not None else "not measured",
            )
        )
    if getattr(sizes, "w7_cluster", False):
        v = _med(values, "W7:cluster", "cpu_ms_per_step")
        ok = None if math.isnan(v) or math.isnan(one) else v / one <= SCALE_TOLERANCE
        out.append(
            (
                f"W7 total CPU per step on a {MODEL_NODES}-node Redis Cluster within 15% of standalone",
                "n/a" if ok is None else ("met" if ok else "not met"),
                f"{_f(v)} vs {_f(one)} ms = {v / one:.2f}x (1 worker each)"
                if ok is not None
                else "not measured",
            )
        )
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def w7_table(values: Values, sizes: Any) -> str:
    one = _med(values, "W7:1w", "cpu_ms_per_step")
    rows = []
    for label, what in _labels(sizes):
        m = lambda metric, label=label: _med(values, f"W7:{label}", metric)  # noqa: E731
        total = m("cpu_ms_per_step")
        rows.append(
            [
                what,
                _f(m("steps_s"), 0),
                _f(total),
                _f(m("worker_cpu_ms_per_step")),
                _f(m("redis_cpu_ms_per_step")),
                _f(m("redis_max_node_cpu_ms_per_step")),
                "n/a" if math.isnan(total / one) else f"{total / one:.2f}",
                _f(m("commands_per_step"), 1),
            ]
        )
    header = [
        "W1 with",
        "steps/s",
        "CPU ms/step (workers + Redis)",
        "workers",
        "Redis",
        "busiest Redis node",
        "÷ 1 worker, standalone",
        "Redis commands/step",
    ]
    return _table(header, rows)


def _commands(values: Values, metrics: list[str], top: int = 10) -> str:
    calls = {m[4:]: _med(values, "W1", m) for m in metrics if m.startswith("cmd:")}
    ranked = sorted(((c, v) for c, v in calls.items() if not math.isnan(v)), key=lambda cv: -cv[1])
    rows = []
    for cmd, per_step in ranked[:top]:
        usec = _med(values, "W1", f"usec:{cmd}")
        rows.append([f"`{cmd.upper()}`", f"{per_step:.2f}", _f(usec / per_step if per_step else math.nan, 1)])
    rest = sum(v for _, v in ranked[top:])
    if rest:
        rows.append(["(all others)", f"{rest:.2f}", ""])
    return _table(["command", "calls per step", "µs per call inside Redis"], rows)


def model_section(values: Values, metrics: list[str], sizes: Any, cores: int) -> str:
    """The model of the limit: per-step costs on each side and what a bigger setup would reach."""
    w = lambda metric: _med(values, "W1", metric)  # noqa: E731
    worker, redis_cpu, client = (
        w("worker_cpu_ms_per_step"),
        w("redis_cpu_ms_per_step"),
        w("client_cpu_ms_per_step"),
    )
    if math.isnan(worker) or math.isnan(redis_cpu):
        return "W1 was not measured in this run: no model."
    cmds, scripts = w("commands_per_step"), w("scripts_per_step")
    net_in, net_out = w("net_in_bytes_per_step"), w("net_out_bytes_per_step")
    # worker side at scale: the per-step cost W7 measured with the most processes (else W1's)
    most = max(sizes.w7_workers) if sizes.w7_workers else 1
    scaled = _med(values, f"W7:{most}w", "worker_cpu_ms_per_step")
    one_w = _med(values, "W7:1w", "worker_cpu_ms_per_step")
    worker_factor = scaled / one_w if not (math.isnan(scaled) or math.isnan(one_w)) else 1.0
    worker_at_scale = worker * worker_factor
    cap_workers = MODEL_WORKER_CORES * 1000 / worker_at_scale
    # Redis side: the busiest node's share of the cluster's Redis CPU, measured on the cluster
    c_total = _med(values, "W7:cluster", "redis_cpu_ms_per_step")
    c_max = _med(values, "W7:cluster", "redis_max_node_cpu_ms_per_step")
    s_total = _med(values, "W7:1w", "redis_cpu_ms_per_step")
    if not any(math.isnan(x) for x in (c_total, c_max, s_total)) and c_total > 0:
        # the W1 figure scaled by what the cluster cost against standalone, on its busiest node
        busiest = redis_cpu * (c_total / s_total) * (c_max / c_total)
        share = f"the busiest node took {c_max / c_total:.0%} of the cluster's Redis CPU in W7"
    else:
        busiest = redis_cpu / MODEL_NODES
        share = "no cluster run: an even spread over the nodes is assumed"
    cap_redis = NODE_CORES * 1000 / busiest
    cap_net = LINK_BYTES_S / max(net_in, net_out)
    caps = {"worker CPU": cap_workers, "Redis CPU": cap_redis, "network": cap_net}
    limit = min(caps, key=lambda k: caps[k])
    here = cores * 1000 / (worker + redis_cpu + client) if not math.isnan(client) else math.nan
    measured = w("steps_s")
    lines = [
        f"Per W1 step (first profile, medians of W1 above: {sizes.w1_orchestrations} chains x "
        f"{sizes.w1_steps} activities, one worker, standalone Redis):",
        "",
        _table(
            ["per step", "value"],
            [
                ["worker CPU ms", _f(worker)],
                ["Redis CPU ms", _f(redis_cpu)],
                ["client CPU ms (the load generator: starts and waits)", _f(client)],
                ["Redis commands executed (scripts' own calls included)", _f(cmds, 1)],
                ["of which scripts (EVALSHA/EVAL/FCALL)", _f(scripts, 2)],
                ["bytes into Redis", _f(net_in, 0)],
                ["bytes out of Redis (replies and pub/sub)", _f(net_out, 0)],
            ],
        ),
        "",
        "Top Redis commands per step (INFO commandstats deltas over the burst; a script's time "
        "includes the commands it calls, which are counted again under their own names):",
        "",
        _commands(values, metrics),
        "",
        f"**What {MODEL_WORKER_CORES} worker cores plus a {MODEL_NODES}-node cluster would reach** "
        "(steps/s, the minimum of three ceilings):",
        "",
        _table(
            ["ceiling", "steps/s", "from"],
            [
                [
                    "worker CPU",
                    _f(cap_workers, 0),
                    f"{MODEL_WORKER_CORES} cores / {_f(worker_at_scale)} ms (W1's {_f(worker)} ms x "
                    f"{worker_factor:.2f}, the worker CPU per step with {most} processes against 1 in W7)",
                ],
                [
                    "Redis CPU",
                    _f(cap_redis, 0),
                    f"{NODE_CORES:g} core per node / {_f(busiest)} ms on the busiest node ({share})",
                ],
                [
                    "network",
                    _f(cap_net, 0),
                    f"a 10 GbE link ({LINK_BYTES_S / 1e9:g} GB/s each way) / "
                    f"{_f(max(net_in, net_out), 0)} bytes per step the busier way",
                ],
                ["**capacity**", f"**{_f(caps[limit], 0)}**", f"bound by {limit}"],
            ],
        ),
        "",
        "Assumptions: (1) the cost per step stays what W7 measured as processes are added (linear "
        "scale: one worker process per core, each owning some of the hub's partitions; a hub needs at "
        "least as many partitions as worker processes, and the default is 32); (2) a Redis node has one "
        "core's budget, since it executes commands on one thread; (3) the partitions spread over the "
        "nodes by their hash tags as in W7's cluster, while the hub-wide keys (the activity task "
        "stream, the worker registry) live on one node, which is why the busiest node sets the "
        "ceiling rather than the average; (4) the load generator (starting and awaiting "
        "orchestrations) runs elsewhere: its CPU is not in the figures; (5) the worker machine's one "
        "link carries all Redis traffic.",
        "",
        f"**Measured against the model on this machine**: {cores} cores shared by the worker, Redis and "
        f"the client allow at most {cores} x 1000 / ({_f(worker)} + {_f(redis_cpu)} + {_f(client)}) = "
        f"{_f(here, 0)} W1 steps/s if every core were busy with nothing else; W1 measured "
        f"{_f(measured, 0)} steps/s, {measured / here:.0%} of that ceiling (the rest is time the "
        "processes wait on each other, and other load on the machine).",
    ]
    return "\n".join(lines)
