"""Benchmark durable against its peers on this machine; writes docs/performance.md.

Run it through ``ops/bench/run`` (see ``--help``). Each workload runs against durable and, in the
same run, against the peers named with ``--peers``; peers are installed into their own
virtualenvs under ``.bench/`` and are never project dependencies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import model  # noqa: E402
from benchlib import Results, log, median  # noqa: E402
from machine import load_average, machine_facts  # noqa: E402

ALL_PEERS = ["dbos", "restate", "temporal", "celery", "arq"]
DURABLE_PEERS = ["dbos", "restate", "temporal"]  # durable-execution systems (celery/arq are job queues)
ALL_WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6", "W7"]
PEER_WORKLOADS = {"W1", "W2", "W3"}


# -- rows of the table --------------------------------------------------------------------------
def table_rows(sizes: Any) -> list[tuple[str, str, str, str]]:
    """(workload, metric, label, better) for every row; better is 'higher' or 'lower'."""
    s5 = sizes.w5_steps
    k = lambda n: f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)  # noqa: E731
    n1, n2 = f"{sizes.w1_orchestrations:,}", sizes.w1_steps
    rows = [
        ("W1", "steps_s", f"W1 chain {n1}x{n2}: activity steps/s", "higher"),
        ("W1", "p50_ms", "W1 chain: end-to-end p50 ms", "lower"),
        ("W1", "p99_ms", "W1 chain: end-to-end p99 ms", "lower"),
        ("W1", "worker_cpu_ms_per_step", "W1 chain: worker CPU ms per step", "lower"),
        ("W1", "redis_cpu_ms_per_step", "W1 chain: Redis CPU ms per step", "lower"),
        ("W1", "client_cpu_ms_per_step", "W1 chain: client CPU ms per step", "lower"),
        ("W1sync", "steps_s", "W1 chain, synchronous client, sequential waits: activity steps/s", "higher"),
        ("W1sync", "client_cpu_ms_per_step", "W1 sync: client CPU ms per step", "lower"),
        ("W1sync", "worker_cpu_ms_per_step", "W1 sync: worker CPU ms per step", "lower"),
        ("W1sync", "redis_cpu_ms_per_step", "W1 sync: Redis CPU ms per step", "lower"),
        ("W1sync", "commands_per_step", "W1 sync: Redis commands per step", "lower"),
        ("W1raw", "jobs_s", f"W1 raw queue: {sizes.w1_orchestrations * n2:,} plain no-op jobs/s", "higher"),
        ("W2", "seconds", f"W2 fan-out/fan-in {sizes.w2_fanout:,}: seconds", "lower"),
        ("W3", "p50_ms", f"W3 latency, 1 activity x{sizes.w3_runs}: p50 ms", "lower"),
        ("W3", "p99_ms", "W3 latency: p99 ms", "lower"),
        (
            "W4",
            "ops_s",
            f"W4 entities: {sizes.w4_signals:,} signals/{sizes.w4_entities:,} counters/"
            f"{sizes.w4_clients} clients: ops/s",
            "higher",
        ),
        ("W4", "send_s", f"W4: signals/s the {sizes.w4_clients} client processes sent", "higher"),
        ("W4", "client_us", "W4: client CPU µs per signal (all client processes)", "lower"),
        ("W4", "worker_us", "W4: worker CPU µs per signal applied", "lower"),
        ("W4", "redis_us", "W4: Redis CPU µs per signal", "lower"),
        ("W4", "ops_s_batch", "W4 with `signal_entities` (64 signals a call): ops/s", "higher"),
        ("W4", "send_s_batch", "W4 with `signal_entities`: signals/s the client processes sent", "higher"),
        ("W4", "client_us_batch", "W4 with `signal_entities`: client CPU µs per signal", "lower"),
        ("W4", "worker_us_batch", "W4 with `signal_entities`: worker CPU µs per signal", "lower"),
        ("W4", "redis_us_batch", "W4 with `signal_entities`: Redis CPU µs per signal", "lower"),
        ("W4", "drain_ops_s", "W4: ops/s one worker applies from a queued backlog (engine side)", "higher"),
        ("W4", "drain_worker_us", "W4 backlog: worker CPU µs per signal", "lower"),
        ("W4", "drain_redis_us", "W4 backlog: Redis CPU µs per signal", "lower"),
    ]
    for n in s5:
        rows.append(("W5", f"ms_per_step_{n}", f"W5 long history {k(n)} steps: ms/step", "lower"))
    rows.append(("W5", "ratio", f"W5 per-step ratio {k(s5[-1])}/{k(s5[0])}", "lower"))
    rows += [
        ("W6", "bytes_completed", "W6 Redis bytes per completed orchestration (1 activity)", "lower"),
        ("W6", "bytes_waiting", "W6 Redis bytes per waiting orchestration", "lower"),
        ("W6", "used_memory_per_waiting", "W6 Redis dataset growth per waiting orchestration", "lower"),
        ("W6", "bytes_entity", "W6 Redis bytes per idle counter entity (state hash)", "lower"),
        (
            "W6",
            "bytes_entity_control",
            "W6 ... plus its de-duplication hash (kept ~5 min after a signal)",
            "lower",
        ),
        (
            "W6",
            "worker_rss_mb",
            f"W6 worker RSS MiB, {sizes.w6_instances:,} cached waiting instances",
            "lower",
        ),
        ("W6", "rss_per_cached", "W6 worker RSS bytes per cached instance", "lower"),
    ]
    rows += model.w7_rows(sizes)
    return rows


# -- formatting ---------------------------------------------------------------------------------
def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    m = median(values)
    if len(values) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(values))}-{fmt(max(values))})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# -- the run ------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        import durable_bench as db
        import scaleout

        self.scaleout = scaleout
        self.args = args
        self.db = db
        self.sizes = db.Sizes.quick() if args.quick else db.Sizes.full()
        self.reps = args.reps or (1 if args.quick else 3)
        self.workloads = set(args.workloads)
        self.profiles = ["fast", "strict"] if args.profile == "both" else [args.profile]
        self.systems: dict[str, Results] = {}  # column name -> results
        self.failures: dict[str, str] = {}  # column name -> why n/a
        self.peer_info: dict[str, dict[str, Any]] = {}
        self.workdir = ROOT / ".bench" / "run" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.started = dt.datetime.now(dt.UTC)
        self.load_before = load_average()

    def durable_column(self, profile: str) -> str:
        return f"durable ({profile})"

    def run_durable(self) -> None:
        db = self.db
        for profile in self.profiles:
            col = self.durable_column(profile)
            res = self.systems.setdefault(col, Results())
            try:
                db.run_profile(self.workdir, profile, self.sizes, self.reps, self.workloads, res)
            except Exception as exc:
                self.failures[col] = f"{type(exc).__name__}: {exc}"
                log(f"durable/{profile} failed: {exc!r}")
                traceback.print_exc()
        # footprint and scale-out do not depend on fsync policy much: measured with the first profile
        profile = self.profiles[0]
        res = self.systems[self.durable_column(profile)]
        for name, fn in (
            ("W6", lambda: db.run_w6(self.workdir, profile, self.sizes, res)),
            ("W7", lambda: self.scaleout.run_w7(self.workdir, profile, self.sizes, self.reps, res)),
        ):
            if name not in self.workloads:
                continue
            try:
                fn()
            except Exception as exc:
                res.note(name, f"failed: {type(exc).__name__}: {exc}")
                log(f"durable {name} failed: {exc!r}")
                traceback.print_exc()

    def run_peers(self) -> None:
        if not self.args.peers:
            return
        import peers

        wanted = [w for w in self.workloads if w in PEER_WORKLOADS]
        if not wanted:
            return
        for name in self.args.peers:
            log(f"peer {name}: preparing")
            try:
                info = peers.run_peer(name, ROOT, self.workdir, self.sizes, self.reps, wanted)
            except Exception as exc:
                self.failures[name] = f"{type(exc).__name__}: {exc}"
                log(f"peer {name} is n/a: {exc}")
                continue
            res = Results()
            res.results = info["results"]
            res.notes = info.get("notes", {})
            res.versions = info.get("versions", {})
            self.systems[name] = res
            self.peer_info[name] = info

    # -- report --------------------------------------------------------------------------------
    def columns(self) -> list[str]:
        cols = [self.durable_column(p) for p in self.profiles]
        cols += [p for p in (self.args.peers or [])]
        return cols

    def values(self, col: str, workload: str, metric: str) -> list[float] | None:
        res = self.systems.get(col)
        if res is None:
            return None
        return res.results.get(workload, {}).get(metric) or None

    def main_table(self) -> str:
        cols = self.columns()
        rows = []
        for workload, metric, label, better in table_rows(self.sizes):
            arrow = "↑" if better == "higher" else "↓"
            rows.append([f"{label} {arrow}"] + [cell(self.values(c, workload, metric)) for c in cols])
        return md_table(["workload (↑ higher is better, ↓ lower is better)", *cols], rows)

    def ratio_table(self) -> str | None:
        peers = [p for p in (self.args.peers or []) if p in self.systems]
        if not peers:
            return None
        base = self.durable_column(self.profiles[0])
        rows = []
        for workload, metric, label, better in table_rows(self.sizes):
            bv = self.values(base, workload, metric)
            cells, any_value = [], False
            for p in peers:
                pv = self.values(p, workload, metric)
                if bv and pv and median(pv):
                    cells.append(f"{median(bv) / median(pv):.2f}")
                    any_value = True
                else:
                    cells.append("-")
            if any_value:
                rows.append([f"{label} {'↑' if better == 'higher' else '↓'}", *cells])
        return md_table([f"durable ({self.profiles[0]}) / peer", *peers], rows)

    def targets(self) -> list[tuple[str, str, str]]:
        """(target, verdict, evidence) for the targets of the issue."""
        base = self.durable_column(self.profiles[0])
        med = lambda col, w, m: median(self.values(col, w, m) or [])  # noqa: E731
        out: list[tuple[str, str, str]] = []

        def verdict(ok: bool | None) -> str:
            return "n/a" if ok is None else ("met" if ok else "not met")

        d1 = med(base, "W1", "steps_s")
        durable_peers = {p: med(p, "W1", "steps_s") for p in DURABLE_PEERS if p in self.systems}
        durable_peers = {p: v for p, v in durable_peers.items() if not math.isnan(v)}
        if durable_peers and not math.isnan(d1):
            best = max(durable_peers, key=lambda p: durable_peers[p])
            ratio = d1 / durable_peers[best]
            out.append(
                (
                    "W1 ≥ 5x the fastest durable peer's steps/s",
                    verdict(ratio >= 5),
                    f"{fmt(d1)} vs {best} {fmt(durable_peers[best])} = {ratio:.2f}x",
                )
            )
        else:
            out.append(("W1 ≥ 5x the fastest durable peer's steps/s", "n/a", "no durable peer measured"))
        arq = med("arq", "W1raw", "jobs_s") if "arq" in self.systems else math.nan
        for what, value, factor in (
            ("W1", d1, 1.5),
            ("W1", d1, 2.5),
            ("W1 sync sequential waits", med(base, "W1sync", "steps_s"), 2.0),
        ):
            target = f"{what} ≥ {factor}x arq's raw job rate"
            if math.isnan(arq) or math.isnan(value):
                out.append((target, "n/a", "arq not measured" if math.isnan(arq) else f"{what} not measured"))
            else:
                out.append(
                    (
                        target,
                        verdict(value / arq >= factor),
                        f"{fmt(value)} vs {fmt(arq)} jobs/s = {value / arq:.2f}x",
                    )
                )
        cpu = med(base, "W1", "worker_cpu_ms_per_step")
        out.append(
            (
                "W1 worker CPU ≤ 0.15 ms per step",
                verdict(None if math.isnan(cpu) else cpu <= 0.15),
                f"{fmt(cpu)} ms",
            )
        )
        w2 = med(base, "W2", "seconds")
        out.append(
            (
                f"W2 ≤ 0.5 s (fan-out {self.sizes.w2_fanout:,})",
                verdict(None if math.isnan(w2) else w2 <= 0.5),
                f"{fmt(w2)} s",
            )
        )
        w3 = med(base, "W3", "p50_ms")
        dbos = med("dbos", "W3", "p50_ms") if "dbos" in self.systems else math.nan
        if not math.isnan(dbos) and not math.isnan(w3):
            out.append(
                (
                    "W3 p50 ≤ 0.5x DBOS",
                    verdict(w3 <= 0.5 * dbos),
                    f"{fmt(w3)} ms vs {fmt(dbos)} ms = {w3 / dbos:.2f}x",
                )
            )
        else:
            out.append(("W3 p50 ≤ 0.5x DBOS", "n/a", f"durable {fmt(w3)} ms; DBOS not measured"))
        w4 = med(base, "W4", "ops_s")
        out.append(
            (
                "W4 ≥ 25,000 signals/s applied end to end (4 client processes)",
                verdict(None if math.isnan(w4) else w4 >= 25_000),
                f"{fmt(w4)} ops/s"
                if not math.isnan(w4)
                else self.systems[base].notes.get("W4", "not measured"),
            )
        )
        w5 = med(base, "W5", "ratio")
        s5 = self.sizes.w5_steps
        out.append(
            (
                f"W5 per-step at {s5[-1]:,} within 1.5x of {s5[0]:,}",
                verdict(None if math.isnan(w5) else w5 <= 1.5),
                f"ratio {fmt(w5)}",
            )
        )
        out += model.w7_targets(lambda w, m: self.values(base, w, m), self.sizes)
        cached = med(base, "W6", "rss_per_cached")
        out.append(
            (
                "W6 worker memory ≤ 1.5 KiB (1,536 B) per cached waiting instance",
                verdict(None if math.isnan(cached) else cached <= 1536),
                f"{fmt(cached)} B of RSS per instance" if not math.isnan(cached) else "not measured",
            )
        )
        w6 = med(base, "W6", "bytes_entity")
        out.append(
            (
                "W6 ≤ 300 bytes per idle counter entity",
                verdict(None if math.isnan(w6) else w6 <= 300),
                f"{fmt(w6)} B" if not math.isnan(w6) else "entities not in the engine yet",
            )
        )
        return out

    def strict_engine(self) -> str:
        if not self.db.HAS_DURABILITY:
            return (
                "; the engine's own strict mode (WAIT/WAITAOF after every commit) was not built when this "
                "ran, so `strict` here means *appendfsync always only*"
            )
        return (
            " plus the worker's and client's `durability=\"strict\"` (after every commit the engine issues "
            "WAITAOF on Redis 7.2+ or WAIT before, and cross-partition messages take the outbox path). This "
            "Redis is standalone without replicas, so the wait covers 0 replicas: the figure measures "
            "fsync-always plus the extra round trip and outbox hop, not replication"
        )

    def readme_table(self) -> str:
        base = self.durable_column(self.profiles[0])
        peers = [p for p in (self.args.peers or []) if p in self.systems]
        picks = [
            ("W1", "steps_s", "W1 chain steps/s ↑"),
            ("W2", "seconds", f"W2 fan-out {self.sizes.w2_fanout:,} s ↓"),
            ("W3", "p50_ms", "W3 p50 ms ↓"),
            ("W3", "p99_ms", "W3 p99 ms ↓"),
        ]
        rows = []
        for col in [base, *peers]:
            row = [col]
            for w, m, _ in picks:
                v = self.values(col, w, m)
                if col == "arq" and w == "W1":
                    v = self.values(col, "W1raw", "jobs_s")  # arq has no workflows: its raw job rate
                row.append(fmt(median(v)) if v else "n/a")
            rows.append(row)
        return md_table(["system"] + [p[2] for p in picks], rows)

    def notes_section(self) -> str:
        lines = []
        for col, res in self.systems.items():
            for w, text in sorted(res.notes.items()):
                lines.append(f"- {col}, {w}: {text}")
        for col, why in self.failures.items():
            lines.append(f"- {col}: n/a — {why}")
        return "\n".join(lines) if lines else "- none"

    def raw_section(self) -> str:
        data = {c: r.results for c, r in self.systems.items()}
        return "```json\n" + json.dumps(data, indent=1, sort_keys=True) + "\n```"

    def model(self) -> str:
        base = self.durable_column(self.profiles[0])
        metrics = list(self.systems[base].results.get("W1", {})) if base in self.systems else []
        return model.model_section(
            lambda w, m: self.values(base, w, m), metrics, self.sizes, os.cpu_count() or 1
        )

    def render(self, elapsed: float) -> str:
        facts = machine_facts()
        facts["load average before / after the run"] = f"{self.load_before} / {load_average()}"
        for col, res in self.systems.items():
            for k, v in res.versions.items():
                facts[f"{col}: {k}"] = v
        cmd = "ops/bench/run " + " ".join(self.args.argv)
        quick = (
            " (--quick: 1 repetition, small sizes — a smoke test, not a measurement)"
            if self.args.quick
            else ""
        )
        profiles = ", ".join(self.profiles)
        parts = [
            "<!-- Generated by ops/bench/run; do not edit by hand: re-run the benchmark instead. -->",
            "# Performance",
            "",
            f"Generated by `{cmd.strip()}` on {self.started:%Y-%m-%d %H:%M} UTC "
            f"in {elapsed / 60:.1f} min{quick}.",
            f"Each figure is the median over {self.reps} repetition(s), with the min-max range in brackets.",
            "",
            "**Noise.** This machine has 2 cores shared by the load generator, the workers, the stores "
            "(Redis, PostgreSQL, restate-server, the Temporal dev server) and, while this ran, other "
            "engineers' test suites. Figures are for comparing systems measured in the same run, not "
            "capacity claims; the load average below says how busy the machine was, and the CPU-per-step "
            "rows are less sensitive to it than the rates.",
            "",
            "## Machine",
            "",
            md_table(["fact", "value"], [[k, v] for k, v in facts.items()]),
            "",
            "## Results",
            "",
            self.main_table(),
            "",
        ]
        ratio = self.ratio_table()
        if ratio:
            parts += [
                "### Ratios",
                "",
                f"durable ({self.profiles[0]}) divided by the peer, medians. For ↑ rows above 1 means "
                "durable is faster; for ↓ rows below 1 means durable is faster.",
                "",
                ratio,
                "",
            ]
        parts += [
            "## Targets",
            "",
            md_table(["target", "verdict", "evidence"], [list(t) for t in self.targets()]),
            "",
            "## Scale-out by cost (W7)",
            "",
            model.w7_table(lambda w, m: self.values(self.durable_column(self.profiles[0]), w, m), self.sizes),
            "",
            "## A model of the limit",
            "",
            self.model(),
            "",
            "## For the README",
            "",
            self.readme_table(),
            "",
            "## How each figure is measured",
            "",
            METHOD.format(profiles=profiles, s=self.sizes, strict_engine=self.strict_engine()),
            "",
            "## Notes from this run",
            "",
            self.notes_section(),
            "",
        ]
        if self.peer_info:
            parts += ["## How each peer ran", ""]
            for name, info in self.peer_info.items():
                parts.append(f"- **{name}**: {info.get('setup', '')}")
            parts.append("")
        parts += ["## Raw samples", "", self.raw_section(), ""]
        return "\n".join(parts)


METHOD = """\
- **Durability profiles** of durable's redis-server: `fast` = `appendonly yes`, `appendfsync
  everysec` (up to about a second of acknowledged writes can be lost on a machine crash); `strict` =
  `appendfsync always` (every write is fsynced before Redis replies){strict_engine}. Profiles run:
  {profiles}. W1-W5 run under each profile; W6 and W7 only under the first one listed.
- **durable** runs its worker(s) as separate processes (`ops/bench/durable_app.py`, default
  `WorkerConfig` except where noted) on a fresh redis-server per workload group; the load comes from
  the benchmark process through the public `AsyncClient` (`schedule_new_orchestration` +
  `wait_for_orchestration_completion`, all started at once with `asyncio.gather`; the client makes
  one call before the load starts, and its URL raises redis-py's pool limit of 100 connections,
  since each waiting call holds a pub/sub connection). Activities are plain `def` functions (run on
  the worker's thread pool).
- **W1 chain**: {s.w1_orchestrations} orchestrations x {s.w1_steps} sequential no-op activities
  started at once; steps/s = activity steps completed / (last completion - first start), as seen by
  the client; latency = start call -> completion seen by the client, per orchestration. CPU ms per
  step = CPU time (user + system) of the worker process(es), or of redis-server, over the burst,
  divided by the steps: less sensitive to a busy machine than the rates.
- **W1 chain, synchronous client, sequential waits**: the same chains from the synchronous
  `Client` as a new user writes it: {s.w1_orchestrations} `schedule_new_orchestration` calls one after
  another, then {s.w1_orchestrations} `wait_for_orchestration_completion` calls one after another (most
  find their instance finished); steps/s = activity steps / (first start -> last wait returned).
  Client CPU ms per step (both W1 rows) = CPU time of the benchmark process, which runs the client.
- **W1 raw queue** (arq and Celery only): {s.w1_orchestrations}x{s.w1_steps} independent no-op jobs
  enqueued at once; jobs/s. A plain job queue without durable workflow state: the baseline for
  Redis-from-Python job dispatch on this box.
- **W2 fan-out**: one orchestration schedules {s.w2_fanout} no-op activities and waits for all;
  seconds from start to the result.
- **W3 latency**: one orchestration with one activity, {s.w3_runs} times in sequence; start -> result.
- **W4 entities**: {s.w4_signals} signals (`add 1`) spread evenly over {s.w4_entities} counter
  entities, sent by {s.w4_clients} client processes at once (`AsyncClient.signal_entity`, 64 calls
  in flight per process); ops/s = signals / (go -> every counter reads its expected value; the
  poll reads only the counters of each process's last signals until they are right, then all of
  them, so that it takes little of the CPU it measures). CPU µs per signal: the client processes'
  own CPU while sending, and the worker's and Redis's from go to the end, divided by the signals.
  The `signal_entities` rows are the same with the batch call (64 signals a call, one call in
  flight per process). The backlog rows: one worker applies the same number of signals queued while
  no worker ran (timed from the moment the worker holds all partitions until every counter is
  right; the status it is read from refreshes every 0.2 s, so part of the work and the worker's
  start-up fall on either side of the start).
- **W5 long histories**: one orchestration of N sequential activities for N in {s.w5_steps}; ms per
  step = wall time / N; the ratio compares the largest N with the smallest (flat = 1).
- **W6 footprint**: `MEMORY USAGE ... SAMPLES 0` summed over an instance's keys (its metadata hash
  and history list), averaged over {s.w6_completed} completed one-activity orchestrations and a
  sample of up to 1,000 of {s.w6_instances:,} orchestrations waiting for an external event; the
  growth of Redis `MEMORY STATS` dataset.bytes per waiting orchestration (includes index and stream
  entries); the worker's RSS (VmRSS) once all {s.w6_instances:,} waiting instances are in its cache
  (the worker runs with `cache_size` raised to hold them: the default is 10,000), and the RSS growth
  per cached instance. Idle entity: `MEMORY USAGE` of the entity's state hash after one signal,
  averaged over 1,000 counters, and the same plus its control hash, which remembers recent signal
  ids for de-duplication for about 5 minutes.
- **W7 scale-out by cost**: W1 ({s.w7_orchestrations}x{s.w1_steps}) with {s.w7_workers} worker processes
  on one redis-server, then (if listed) with one worker on a 3-node Redis Cluster (3 primaries, no
  replicas, `redis-cli --cluster create`); a fresh Redis per configuration, the client in the
  benchmark process. On 2 cores throughput cannot show added capacity; the cost can: CPU ms per step
  = CPU of all worker processes plus every redis-server over the burst / steps, and its ratio to
  1 worker on standalone Redis (target: within 15%). Redis commands per step are INFO commandstats
  deltas (script-internal calls included): they count the coordination itself, while CPU time per
  step also rises when more processes than cores take turns on the machine (each resumes with
  cold caches), whatever they coordinate.
- **Model of the limit**: W1's per-step costs (worker and Redis CPU from /proc; Redis commands from
  INFO commandstats; bytes from INFO stats total_net_input_bytes/total_net_output_bytes, over the
  burst) scaled by W7's cost ratios to 16 worker cores and a 3-node cluster; the assumptions are
  stated with it.
- **Peers** run W1-W3 only (W4-W7 are durable-specific or not comparable); "n/a" means not run or
  not applicable. arq and Celery are plain job queues, not durable-execution systems."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ops/bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="1 repetition, small sizes, durable only unless --peers is given"
    )
    p.add_argument(
        "--peers",
        default=None,
        help=f"comma-separated peers to compare with ({','.join(ALL_PEERS)}), 'none' or 'all'; "
        "default: all, or none with --quick",
    )
    p.add_argument(
        "--profile",
        choices=["fast", "strict", "both"],
        default=None,
        help="durability profile(s) of durable's Redis; default: both, or fast with --quick",
    )
    p.add_argument(
        "--out",
        default=None,
        help="markdown report to write; default docs/performance.md "
        "(with --quick: .bench/performance-quick.md)",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, or 1 with --quick)")
    p.add_argument("--workloads", default="all", help="comma-separated subset of W1..W7 (default all)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    args = p.parse_args(argv)
    args.argv = argv
    if args.peers is None:
        args.peers = [] if args.quick else list(ALL_PEERS)
    elif args.peers.strip().lower() in ("", "none"):
        args.peers = []
    elif args.peers.strip().lower() == "all":
        args.peers = list(ALL_PEERS)
    else:
        args.peers = [x.strip().lower() for x in args.peers.split(",") if x.strip()]
        unknown = [x for x in args.peers if x not in ALL_PEERS]
        if unknown:
            p.error(f"unknown peer(s) {unknown}; choose from {ALL_PEERS}")
    if args.profile is None:
        args.profile = "fast" if args.quick else "both"
    if args.workloads.strip().lower() == "all":
        args.workloads = list(ALL_WORKLOADS)
    else:
        args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
        bad = [w for w in args.workloads if w not in ALL_WORKLOADS]
        if bad:
            p.error(f"unknown workload(s) {bad}")
    if args.out is None:
        args.out = ".bench/performance-quick.md" if args.quick else "docs/performance.md"
    return args


def _terminate(signum: int, frame: Any) -> None:
    # raised wherever the main thread is, so the finally blocks stop servers and workers
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    run = Run(args)
    run.workdir.mkdir(parents=True, exist_ok=True)
    log(
        f"durable profiles {run.profiles}, peers {args.peers or 'none'}, {run.reps} repetition(s), "
        f"workloads {','.join(args.workloads)}"
    )
    run.run_durable()
    run.run_peers()
    elapsed = time.monotonic() - t0
    report = run.render(elapsed)
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps({c: r.to_dict() for c, r in run.systems.items()}, indent=1))
    shutil.rmtree(run.workdir, ignore_errors=True)
    print()
    print(run.main_table())
    ratio = run.ratio_table()
    if ratio:
        print()
        print(ratio)
    print()
    print(md_table(["target", "verdict", "evidence"], [list(t) for t in run.targets()]))
    print()
    print("For the README:")
    print(run.readme_table())
    print()
    print(
        f"report written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} "
        f"in {elapsed / 60:.1f} min"
    )
    # a durable column that failed outright is an error; peers are optional
    return 1 if any(c.startswith("durable") for c in run.failures) else 0


if __name__ == "__main__":
    sys.exit(main())
