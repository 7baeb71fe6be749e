"""W7, scale-out by cost: W1 with 1, 2, 4 and 8 worker processes on one hub, and W1 on a 3-node
Redis Cluster against standalone, each measured as CPU per step (all workers plus Redis).

On a 2-core machine throughput cannot show that more workers add capacity; CPU per step can: if
the total stays flat as processes are added, the coordination between them costs nothing that
grows with their number, and capacity scales with cores.
"""

from __future__ import annotations

from pathlib import Path

from benchlib import Results, log
from costs import measure_burst
from durable_bench import Cluster, Sizes, _burst_sync, _warm

#: the figures of each W7 configuration kept in the results (besides per-command counts)
KEPT = (
    "steps_s",
    "cpu_ms_per_step",
    "worker_cpu_ms_per_step",
    "redis_cpu_ms_per_step",
    "redis_max_node_cpu_ms_per_step",
    "client_cpu_ms_per_step",
    "commands_per_step",
    "scripts_per_step",
    "net_in_bytes_per_step",
    "net_out_bytes_per_step",
)
CLUSTER_NODES = 3


def configurations(sizes: Sizes) -> list[tuple[str, int, int]]:
    """(label, worker processes, cluster nodes or 0 for standalone) in the order they run."""
    out = [(f"{n}w", n, 0) for n in sizes.w7_workers]
    if sizes.w7_cluster:
        out.append(("cluster", 1, CLUSTER_NODES))
    return out


def run_w7(workdir: Path, profile: str, sizes: Sizes, reps: int, res: Results) -> None:
    n = sizes.w7_orchestrations * sizes.w1_steps
    for label, workers, nodes in configurations(sizes):
        where = f"a {nodes}-node Redis Cluster" if nodes else "one redis-server"
        log(f"durable/{profile}: W7 W1 with {workers} worker process(es) on {where}")
        with Cluster(workdir, profile, f"w7-{label}", nodes=nodes) as cluster:
            cluster.start_workers(workers)
            _warm(cluster)
            for _ in range(reps):
                m = measure_burst(
                    cluster.worker_pids(),
                    cluster.redis_pids,
                    cluster.redis_urls,
                    lambda c=cluster: _burst_sync(c, sizes.w7_orchestrations, sizes.w1_steps),
                    n,
                )
                for metric, value in m.items():
                    if metric in KEPT or metric.startswith("cmd:"):
                        res.add(f"W7:{label}", metric, value)
                log(
                    f"  W7 {label}: {m['steps_s']:.0f} steps/s; CPU ms/step {m['cpu_ms_per_step']:.3f} "
                    f"(workers {m['worker_cpu_ms_per_step']:.3f}, Redis {m['redis_cpu_ms_per_step']:.3f}, "
                    f"busiest Redis node {m['redis_max_node_cpu_ms_per_step']:.3f}); "
                    f"{m['commands_per_step']:.1f} Redis commands per step"
                )
