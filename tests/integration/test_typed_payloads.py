"""Typed payloads against a real Redis: dataclasses, pydantic models, enums and datetimes arrive
typed in activities, orchestrators, entity operations and client reads; ctx.logger writes each line
once across a step that replays; ctx.parent_instance_id; ctx.signal_entity(signal_at=)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
from collections.abc import Generator
from typing import Any

import pydantic
import pytest
from _poll import wait_until

from durable import Client, Entity, OrchestrationStatus, SerializationError, Worker, WorkerConfig

FAST = dict(poll_ms=50, balance_interval_ms=50, renew_interval_ms=200, lease_ttl_ms=3000)


class Status(enum.Enum):
    NEW = "new"
    PAID = "paid"


@dataclasses.dataclass
class Item:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    id: str
    status: Status
    placed: dt.datetime
    items: list[Item]


class Receipt(pydantic.BaseModel):
    order_id: str
    total: int
    paid_at: dt.datetime


class Wallet(Entity):
    state: list[Receipt] = []

    def pay(self, receipt: Receipt) -> int:
        assert isinstance(receipt, Receipt) and isinstance(receipt.paid_at, dt.datetime)
        assert all(isinstance(r, Receipt) for r in self.state)
        self.state = [*self.state, receipt]
        return len(self.state)


def _order() -> Order:
    return Order(
        "o-1", Status.NEW, dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC), [Item("A", 2), Item("B", 1)]
    )


def test_types_arrive_in_activities_orchestrators_entities_and_client_reads(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))
    seen: list[str] = []

    @worker.activity
    def charge(ctx: Any, order: Order) -> Receipt:
        assert isinstance(order, Order) and isinstance(order.items[0], Item) and order.status is Status.NEW
        seen.append("activity")
        return Receipt(order_id=order.id, total=sum(i.qty for i in order.items), paid_at=order.placed)

    @worker.entity
    def audit(ctx: Any, entry: Order) -> None:
        assert isinstance(entry, Order) and entry.status is Status.PAID
        seen.append("entity")
        ctx.set_state(entry)

    @worker.orchestrator
    def pay(ctx: Any, order: Order) -> Generator[Any, Any, Order]:
        assert isinstance(order, Order) and isinstance(order.placed, dt.datetime)
        receipt = yield ctx.call_activity(charge, input=order)  # the annotated return type
        assert isinstance(receipt, Receipt)
        count = yield ctx.call_entity("@wallet@ada", "pay", input=receipt, return_type=int)
        assert count == 1
        status = yield ctx.wait_for_external_event("status", data_type=Status)
        assert status is Status.PAID
        paid = dataclasses.replace(order, status=status)
        yield ctx.call_entity("@audit@ada", "record", input=paid)
        seen.append("orchestrator")
        return paid

    @worker.orchestrator
    def parent(ctx: Any, order: Order) -> Any:
        child = yield ctx.call_sub_orchestrator(pay, input=order, instance_id="child-1")
        assert isinstance(child, Order)  # the sub-orchestrator's declared return type
        return child.status

    worker.add_entity(Wallet)
    with worker, Client(redis_url, hub) as client:
        iid = client.schedule_new_orchestration(parent, input=_order())
        client.wait_for_orchestration_start("child-1", timeout=30)
        client.raise_orchestration_event("child-1", "status", data=Status.PAID)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
        child = client.get_orchestration_state("child-1")
        assert child is not None and child.parent_instance_id == iid
        assert child.input_as(Order) == _order()
        assert child.output_as(Order) == dataclasses.replace(_order(), status=Status.PAID)
        assert state.output_as(Status) is Status.PAID
        wallet = client.get_entity("@wallet@ada")
        assert wallet is not None
        (receipt,) = wallet.state_as(list[Receipt])
        assert receipt == Receipt(order_id="o-1", total=3, paid_at=_order().placed)
        audit_state = client.get_entity("@audit@ada")
        assert audit_state is not None and audit_state.state_as(Order).status is Status.PAID
        with pytest.raises(SerializationError, match=r"field 'items\[0\]\.qty'"):
            dataclasses.replace(
                child, output={**child.output, "items": [{"sku": "A", "qty": "x"}]}
            ).output_as(Order)
    assert sorted(seen) == ["activity", "entity", "orchestrator"]


def test_an_input_that_does_not_fit_fails_with_the_field_named(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.activity
    def ship(ctx: Any, item: Item) -> str:
        return item.sku

    @worker.orchestrator
    def send(ctx: Any, raw: Any) -> Any:
        return (yield ctx.call_activity(ship, input=raw))

    @worker.orchestrator
    def typed(ctx: Any, order: Order) -> Any:
        return order.id

    with worker, Client(redis_url, hub) as client:
        bad_activity = client.schedule_new_orchestration(send, input={"sku": "A"})
        bad_orch = client.schedule_new_orchestration(typed, input={"id": "x", "status": "lost"})
        a = client.wait_for_orchestration_completion(bad_activity, timeout=30)
        o = client.wait_for_orchestration_completion(bad_orch, timeout=30)
    assert a.failure_details is not None and "input of activity 'ship'" in a.failure_details.message
    assert "field 'qty': missing" in a.failure_details.message
    assert o.failure_details is not None and o.failure_details.error_type == "SerializationError"
    assert "input of orchestration 'typed'" in o.failure_details.message


def test_ctx_logger_writes_each_line_once_across_a_step_that_replays(
    redis_url: str, hub: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = WorkerConfig(**FAST, cache_size=1)  # every other instance evicts: each step replays
    worker = Worker(redis_url, hub, config=config)

    @worker.activity
    def work(ctx: Any, n: int) -> int:
        return n

    @worker.orchestrator
    def chatty(ctx: Any, n: int) -> Any:
        for i in range(3):
            ctx.logger.info("step %d of %s", i, ctx.instance_id)
            yield ctx.call_activity(work, input=i)
        ctx.logger.info("done %s", ctx.instance_id)
        return n

    def lines() -> list[str]:
        return sorted(r.getMessage() for r in caplog.records if r.name == "durable.orchestration")

    level = caplog.at_level(logging.INFO, logger="durable.orchestration")
    with level, worker, Client(redis_url, hub) as client:
        iids = [client.schedule_new_orchestration(chatty, input=i) for i in range(3)]
        for iid in iids:
            assert client.wait_for_orchestration_completion(iid, timeout=30).output is not None
        steps = ("step 0 of", "step 1 of", "step 2 of", "done")
        expected = sorted(f"{m} {iid}" for iid in iids for m in steps)
        # a step's lines are written just after its commit, which the client saw
        wait_until(lambda: len(lines()) >= len(expected), 10, "the last lines")
    assert lines() == expected  # and no line came twice later
    records = [r for r in caplog.records if r.name == "durable.orchestration"]
    assert {r.instance_id for r in records} == set(iids)  # type: ignore[attr-defined]
    assert {r.orchestration_name for r in records} == {"chatty"}  # type: ignore[attr-defined]


def test_signal_entity_at_from_an_orchestration(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.entity
    def reminder(ctx: Any, at: dt.datetime) -> None:
        ctx.set_state({"due": at, "applied": dt.datetime.now(dt.UTC)})

    @worker.orchestrator
    def remind(ctx: Any, _: Any) -> Any:
        due = ctx.current_utc_datetime + dt.timedelta(milliseconds=400)
        ctx.signal_entity("@reminder@r1", "fire", input=due, signal_at=due)
        return due

    with worker, Client(redis_url, hub) as client:
        iid = client.schedule_new_orchestration(remind)
        due = client.wait_for_orchestration_completion(iid, timeout=30).output_as(dt.datetime)
        assert client.get_entity("@reminder@r1") is None  # parked until it is due
        # a scheduled signal has no completion to wait for
        entity = wait_until(lambda: client.get_entity("@reminder@r1"), 30, "the scheduled signal")
    assert entity is not None and entity.state["applied"] >= entity.state["due"] == due
