"""Typed payloads without Redis: what is encoded, what is rebuilt, and the errors that name the field."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import logging
import uuid
from collections.abc import Generator
from typing import Any, Optional

import pydantic
import pytest

from durable import SerializationError
from durable._core import events as ev
from durable._core.convert import from_plain, input_type, return_type
from durable._core.executor import OrchestrationExecutor
from durable._core.registry import name_of
from durable._core.serialization import decode, encode


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


@dataclasses.dataclass
class Line:
    sku: str
    qty: int
    price: decimal.Decimal


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    tier: Tier
    placed: dt.datetime
    due: dt.date
    window: dt.timedelta
    lines: list[Line]
    note: Optional[str] = None  # noqa: UP045 - Optional is part of what is tested
    extra: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


class Customer(pydantic.BaseModel):
    name: str
    since: dt.datetime
    tier: Tier


def _order() -> Order:
    return Order(
        id=uuid.uuid4(),
        tier=Tier.GOLD,
        placed=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        due=dt.date(2024, 5, 7),
        window=dt.timedelta(hours=2),
        lines=[Line("A-1", 2, decimal.Decimal("9.99"))],
        extra={"box": (1, 2)},
    )


def test_a_nested_dataclass_round_trips_as_plain_values() -> None:
    order = _order()
    plain = decode(encode(order))
    assert plain["tier"] == "gold" and plain["due"] == "2024-05-07" and plain["window"] == 7200.0
    assert plain["lines"] == [{"sku": "A-1", "qty": 2, "price": "9.99"}]
    assert from_plain(plain, Order) == order


def test_plain_json_values_from_other_languages_are_rebuilt() -> None:
    wire = {
        "id": "0b9e0f4e-4a44-4b7c-9a8e-1c1d2f3a4b5c",
        "tier": "silver",
        "placed": "2024-05-01T12:30:00Z",
        "due": "2024-05-07",
        "window": 60,
        "lines": [{"sku": "B", "qty": 1, "price": 3}],
    }
    order = from_plain(wire, Order)
    assert order.tier is Tier.SILVER and order.placed.tzinfo is not None
    assert order.lines[0].price == decimal.Decimal(3) and order.window == dt.timedelta(minutes=1)
    assert order.note is None and order.extra == {}


def test_pydantic_models_and_containers() -> None:
    customer = Customer(name="ada", since=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), tier=Tier.GOLD)
    assert from_plain(decode(encode([customer])), list[Customer]) == [customer]
    assert from_plain(decode(encode({"a": Tier.GOLD})), dict[str, Tier]) == {"a": Tier.GOLD}
    assert from_plain([1, "x"], tuple[int, str]) == (1, "x")
    assert from_plain(None, Optional[Order]) is None  # noqa: UP045


@pytest.mark.parametrize(
    ("value", "tp", "message"),
    [
        ({"id": "x"}, Order, "field 'id': 'x' is not a UUID"),
        (
            {**decode(encode(_order())), "lines": [{"sku": "A", "qty": "two", "price": 1}]},
            Order,
            "field 'lines[0].qty': expected int, got str",
        ),
        ({**decode(encode(_order())), "tier": "bronze"}, Order, "field 'tier': 'bronze' is not a valid Tier"),
        ({"name": "x", "tier": "gold"}, Customer, "field 'since'"),
        ({"sku": "A", "price": 1}, Line, "field 'qty': missing"),
    ],
)
def test_a_value_that_does_not_fit_names_the_field(value: Any, tp: Any, message: str) -> None:
    with pytest.raises(SerializationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_plain(value, tp)


def test_declared_types_of_functions() -> None:
    def activity(ctx: Any, order: Order) -> Line: ...

    def orchestrator(ctx: Any, customer: Customer) -> Generator[Any, Any, list[Order]]:
        yield None
        return []

    async def coroutine(ctx: Any, n: int) -> Tier: ...

    assert input_type(activity) is Order and return_type(activity) is Line
    assert input_type(orchestrator) is Customer and return_type(orchestrator) == list[Order]
    assert return_type(coroutine) is Tier
    assert input_type(lambda ctx, x: x) is None


def _run(fn: Any, events: list[ev.Event]) -> OrchestrationExecutor:
    ex = OrchestrationExecutor("i1", {"o": fn}.get, name_of)
    ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": 1000}, *events])
    return ex


def test_the_executor_rebuilds_inputs_results_and_event_data() -> None:
    seen: list[Any] = []

    def make_line(ctx: Any, order: Order) -> Line: ...

    def o(ctx: Any, order: Order) -> Any:
        seen.append(order)
        line = yield ctx.call_activity(make_line, input=order)
        seen.append(line)
        tier = yield ctx.wait_for_external_event("tier", data_type=Tier)
        seen.append(tier)
        return "ok"

    started = {"k": ev.EXECUTION_STARTED, "name": "o", "input": encode(_order()), "exec": "e"}
    ex = _run(o, [started])
    result = ex.execute(
        [
            {"k": ev.ORCHESTRATOR_STARTED, "ts": 2000},
            {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode(Line("Z", 1, decimal.Decimal("1.5")))},
            {"k": ev.EVENT_RAISED, "name": "tier", "input": encode("silver")},
        ]
    )
    assert result.status.value == "COMPLETED"
    order, line, tier = seen
    assert isinstance(order, Order) and isinstance(order.lines[0], Line) and order.tier is Tier.GOLD
    assert line == Line("Z", 1, decimal.Decimal("1.5")) and tier is Tier.SILVER


def test_a_result_that_does_not_fit_fails_the_task_where_it_is_awaited() -> None:
    def make_line(ctx: Any, n: int) -> Line: ...

    def o(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity(make_line, input=1)
        except Exception as exc:
            return str(exc)

    ex = _run(o, [{"k": ev.EXECUTION_STARTED, "name": "o", "input": None, "exec": "e"}])
    result = ex.execute(
        [
            {"k": ev.ORCHESTRATOR_STARTED, "ts": 2000},
            {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode({"sku": 1})},
        ]
    )
    message = decode(result.output)
    assert "result of activity 'make_line'" in message and "field 'sku': expected str, got int" in message


def test_ctx_logger_drops_records_while_replaying_and_names_the_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def o(ctx: Any, _: Any) -> Any:
        ctx.logger.info("before %s", "timer")
        yield ctx.create_timer(dt.timedelta(seconds=1))
        ctx.logger.warning("after timer")
        return ctx.parent_instance_id

    history = [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": 1000},
        {"k": ev.EXECUTION_STARTED, "name": "o", "input": None, "exec": "e", "parent": {"iid": "p1"}},
        {"k": ev.TIMER_CREATED, "tid": 0, "fire_at": 2000},
    ]
    with caplog.at_level(logging.INFO, logger="durable.orchestration"):
        ex = OrchestrationExecutor("i1", {"o": o}.get, name_of)
        ex.replay(history)
        result = ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": 2000}, {"k": ev.TIMER_FIRED, "tid": 0}])
    assert [r.getMessage() for r in caplog.records] == ["after timer"]  # 'before' was replayed
    record = caplog.records[0]
    assert (record.instance_id, record.orchestration_name) == ("i1", "o")  # type: ignore[attr-defined]
    assert hasattr(record, "orchestration_version") and record.funcName == "o"
    assert decode(result.output) == "p1"
