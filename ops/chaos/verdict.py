"""The verdict of a chaos run: every oracle checked once the work is done, and the table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import redis
import workload
from oracles import TERMINAL, Finding, Ledger, check_audit_streams, payload, shape, unpack, validate_history

if TYPE_CHECKING:
    from harness import ChaosRun

FAULT_KINDS = (
    "worker SIGKILL",
    "worker SIGSTOP/SIGCONT",
    "split-brain (lease DEL)",
    "redis kill -9",
    "scale up",
    "graceful SIGTERM",
)


class Verdict:
    """Reads the final state of the hub and the ledger; trusts neither the engine nor its client."""

    def __init__(self, run: ChaosRun) -> None:
        self.r = run

    def run(self, remaining: set[str], probe_s: float | None, all_done_s: float, quiet: list[str]) -> int:
        """Check every oracle, print the table and return the exit status."""
        st = self.r.stats
        violations = st.violations + self.r.auditor.violations
        ledger = Ledger.load(redis.Redis.from_url(self.r.ledger_url), f"ledger:{self.r.hub}")
        scheduled_keys: dict[str, str] = {}
        completed_ok = 0
        not_as_predicted: list[str] = []
        ids = sorted(self.r.predictions)
        for start in range(0, len(ids), 100):
            chunk = ids[start : start + 100]
            pipe = self.r.sync.pipeline(transaction=False)
            for iid in chunk:
                pipe.hgetall(self.r.keys.instance(iid))
                pipe.lrange(self.r.keys.history(iid), 0, -1)
            raw = pipe.execute()
            for n, iid in enumerate(chunk):
                fields, history = raw[2 * n], [unpack(h) for h in raw[2 * n + 1]]
                ok = self._check_instance(iid, fields, history, violations, not_as_predicted, scheduled_keys)
                completed_ok += ok
        # the ledger: every activity of every instance ran at least once, nothing else ran
        predicted = {a for pred in self.r.predictions.values() for a in pred.activities}
        for key, logical_id in scheduled_keys.items():
            if key not in ledger.executions:
                violations.append(Finding("completed activity never executed", f"{key} ({logical_id})"))
            elif ledger.logical_of[key] != {logical_id}:
                violations.append(
                    Finding("idempotency key of another activity", f"{key}: {ledger.logical_of[key]}")
                )
        finished = {iid for iid in self.r.predictions if iid not in remaining}
        for logical_id in predicted:
            owner = logical_id.split("|", 1)[0]
            if owner in finished and logical_id not in ledger.keys_of:
                violations.append(Finding("activity of a finished instance never executed", logical_id))
        unknown = [lid for lid in ledger.keys_of if lid not in predicted]
        for lid in unknown[:20]:
            violations.append(Finding("unpredicted activity executed", lid))
        doubly = [lid for lid, keys in ledger.keys_of.items() if len(keys) > 1]
        if doubly and self.r.strict:
            for lid in doubly[:20]:
                violations.append(
                    Finding(
                        "one activity scheduled by two executions", f"{lid}: {sorted(ledger.keys_of[lid])}"
                    )
                )
        audit_checked, audit_found = check_audit_streams(self.r.sync, self.r.keys)
        violations.extend(audit_found)
        balances = self._check_entities(violations) if self.r.entities else None
        for iid in sorted(remaining)[:20]:
            not_as_predicted.append(f"{iid}: not finished")
        failures = not_as_predicted + [f"not drained: {q}" for q in quiet] + st.failures + self.r.pool.crashes
        fenced, errors = self._scan_logs()
        rows = [
            (
                "seed / minutes / workers / fsync",
                f"{self.r.args.seed} / {self.r.args.minutes:g} / {self.r.args.workers} / "
                + (self.r.args.fsync if self.r.owned else "external redis (no redis kills)"),
            ),
            (
                "instances (top-level + children)",
                f"{len(self.r.plan) + 1} + {len(self.r.predictions) - len(self.r.plan) - 1}",
            ),
            ("instances completed as predicted", f"{completed_ok} / {len(self.r.predictions)}"),
            ("instances not finished", str(len(remaining))),
        ]
        for kind in FAULT_KINDS:
            if kind == "redis kill -9" and not self.r.owned:
                continue
            rows.append((f"faults: {kind}", str(st.faults[kind])))
        rows += [
            ("activities scheduled (predicted)", str(len(predicted))),
            ("activity executions (ledger)", str(ledger.total)),
            (
                "activity re-executions",
                f"{ledger.total - len(ledger.keys_of)} (same task {ledger.same_task_reruns}, "
                f"re-scheduled {ledger.extra_schedules})",
            ),
            (
                "lease changes / double ownership claims",
                f"{self.r.auditor.lease_changes} / {self.r.auditor.overlapping_claims}",
            ),
            (
                "audit samples: leases+cursors / histories",
                f"{self.r.auditor.samples} / {self.r.auditor.history_samples}",
            ),
            ("fenced partition loops (worker logs)", str(fenced)),
            (
                "commit audit entries checked",
                str(audit_checked) if audit_checked else "0 (no audit hook in this build)",
            ),
        ]
        if not self.r.strict:
            rows += [
                ("rollbacks observed (everysec)", str(len(self.r.auditor.rollbacks))),
                ("lost starts re-sent / events re-raised", f"{st.resubmitted_starts} / {st.reraised_events}"),
            ]
        if balances is not None:
            rows.append(("bank accounts checked", balances))
        rows += [
            (
                "recovery after last fault: probe",
                "did not complete" if probe_s is None else f"{probe_s:.1f} s",
            ),
            (
                "recovery after last fault: all done",
                "not all done" if remaining else f"{max(0.0, all_done_s):.1f} s",
            ),
            (
                "worker crashes / startup exits (redis down)",
                f"{len(self.r.pool.crashes)} / {self.r.pool.unreachable_exits}",
            ),
            ("tracebacks in worker logs", str(errors)),
        ]
        where = [f"{v.kind}: {v.detail}" for v in violations] + failures
        rows.append(("where it failed", where[0] if where else "-"))
        _print_table(rows, where[1:10])
        self._write_report(rows, violations, failures, ledger)
        print(f"safety violations: {len(violations)}", flush=True)
        return 1 if violations or failures else 0

    def _check_instance(
        self,
        iid: str,
        fields: dict[bytes, bytes],
        history: list[dict[str, Any]],
        violations: list[Finding],
        not_as_predicted: list[str],
        scheduled_keys: dict[str, str],
    ) -> bool:
        pred = self.r.predictions[iid]
        if not fields:
            return False
        status = fields.get(b"status", b"").decode()
        for problem in validate_history(history, status):
            violations.append(Finding("invalid history", f"{iid}: {problem}"))
        exec_id = fields.get(b"exec", b"").decode()
        for e in history:
            for name in ("input", "result", "output"):
                try:
                    value = payload(self.r.sync, e.get(name))
                except LookupError as exc:
                    violations.append(
                        Finding("dangling payload reference", f"{iid}: event {e.get('eid')}: {exc}")
                    )
                    continue
                if e.get("k") == "TaskScheduled" and name == "input":
                    logical_id = value.get("id") if isinstance(value, dict) else None
                    call = e.get("call", e["tid"])  # a retry runs under its call's first task id
                    scheduled_keys[f"{iid}:{exec_id}:{call}"] = logical_id
        if status not in TERMINAL:
            return False
        if status != "COMPLETED":
            failure = unpack(fields.get(b"failure")) or {}
            message = f"{iid}: {status} {failure.get('error_type')}: {str(failure.get('message'))[:200]}"
            if failure.get("error_type") == "NonDeterminismError":
                violations.append(Finding("non-determinism detected", message))
            else:
                not_as_predicted.append(message)
            return False
        try:
            output = payload(self.r.sync, fields.get(b"output"))
        except LookupError as exc:
            violations.append(Finding("dangling payload reference", f"{iid}: output: {exc}"))
            return False
        if output != pred.output:
            violations.append(
                Finding("wrong output", f"{iid}: {str(output)[:150]} != {str(pred.output)[:150]}")
            )
            return False
        got = shape(history)
        if got != pred.shape:
            violations.append(
                Finding("history shape differs from the prediction", f"{iid}: {got[:6]} != {pred.shape[:6]}")
            )
            return False
        return True

    def _check_entities(self, violations: list[Finding]) -> str:
        from durable import Client, EntityId

        expected: dict[str, tuple[int, int]] = {}
        for pred in self.r.predictions.values():
            for account, (delta, ops) in pred.balances.items():
                total, count = expected.get(account, (0, 0))
                expected[account] = (total + delta, count + ops)
        client = Client(self.r.url, hub=self.r.hub)
        try:
            total = 0
            for account, (delta, ops) in sorted(expected.items()):
                state = client.get_entity(EntityId(workload.ACCOUNT, account))
                value = state.state if state is not None else None
                want = {"balance": workload.ACCOUNT_START + delta, "ops": ops}
                if value != want:
                    violations.append(Finding("bank account differs", f"{account}: {value} != {want}"))
                total += (value or {}).get("balance", workload.ACCOUNT_START)
            if total != workload.ACCOUNT_START * len(expected):
                violations.append(
                    Finding("bank total changed", f"{total} != {workload.ACCOUNT_START * len(expected)}")
                )
        finally:
            client.close()
        return f"{len(expected)} accounts, total {total}"

    def _scan_logs(self) -> tuple[int, int]:
        fenced = errors = 0
        for log in sorted((self.r.workdir / "logs").glob("worker-*.log")):
            text = log.read_text(errors="replace")
            fenced += text.count("lease lost, stopping")
            errors += text.count("Traceback")
        return fenced, errors

    def _write_report(
        self, rows: list[tuple[str, str]], violations: list[Finding], failures: list[str], ledger: Ledger
    ) -> None:
        report = {
            "hub": self.r.hub,
            "table": dict(rows),
            "violations": [[v.kind, v.detail] for v in violations],
            "failures": failures,
            "rollbacks": [[r.kind, r.detail] for r in self.r.auditor.rollbacks],
            "lost_starts": self.r.stats.lost_starts,
            "attempts": dict(sorted(ledger.attempts.items())),
            "overlapping_ownership_claims": self.r.auditor.overlapping_claims,
            "history_samples": self.r.auditor.history_samples,
            "notes": self.r.stats.notes,
        }
        (self.r.workdir / "report.json").write_text(json.dumps(report, indent=1))


def _print_table(rows: list[tuple[str, str]], more: list[str]) -> None:
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    print(line)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for item in more:
        print(f"{'':<{width}}  {item}")
    print(line)
