"""The ops dashboard in a real headless Chromium, against a real worker on a real Redis.

Needs a Chromium binary (``ops/tools/ensure-chromium.sh`` installs Debian's package) and the
``playwright`` Python package, which drives that system binary; Playwright's own browser
downloads are never used. The test skips only when no Chromium binary can be found.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from durable import AsyncClient, OrchestrationStatus, Worker, WorkerConfig
from durable._ops.server import serve_ops

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The README's picture of the dashboard; rewritten only with DURABLE_UPDATE_SCREENSHOT=1, so a
#: test run leaves the checkout as it found it.
README_SCREENSHOT = REPO_ROOT / "docs" / "dashboard.png"
UPDATE_SCREENSHOT_ENV = "DURABLE_UPDATE_SCREENSHOT"
TOKEN = "browser-test-token"
PARTITIONS = 4
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright's async API runs on asyncio


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium binary on PATH; install it with ops/tools/ensure-chromium.sh")
    return path


# -- the application ----------------------------------------------------------------------------
def greet(ctx: Any, name: str) -> str:
    return f"Hello {name}!"


def greetings(ctx: Any, names: list[str]) -> Any:
    out = []
    for name in names:
        out.append((yield ctx.call_activity(greet, input=name)))
    return out


def approval(ctx: Any, request: Any) -> Any:
    ctx.set_custom_status({"stage": "waiting for approval"})
    decision = yield ctx.wait_for_external_event("approve")
    ctx.set_custom_status({"stage": "approved"})
    return {"request": request, "decision": decision}


def counter(ctx: Any, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


def broken(ctx: Any, _: Any) -> Any:
    if False:
        yield None
    raise RuntimeError("payment service rejected the card")


@asynccontextmanager
async def running_stack(redis_url: str, hub: str) -> AsyncIterator[tuple[str, AsyncClient, str]]:
    worker = Worker(
        redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200, partitions=PARTITIONS)
    )
    for orchestrator in (greetings, approval, broken):
        worker.add_orchestrator(orchestrator)
    worker.add_activity(greet)
    worker.add_entity(counter)
    async with worker, AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        runtime = worker._runtime
        assert runtime is not None
        port = await tg.start(serve_ops, runtime, client, "127.0.0.1", 0, TOKEN)
        try:
            yield f"http://127.0.0.1:{port}", client, runtime.worker_id
        finally:
            tg.cancel_scope.cancel()


async def test_dashboard_in_headless_chromium(
    redis_url: str, hub: str, chromium: str, tmp_path: Path
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    expect.set_options(timeout=20_000)
    update = os.environ.get(UPDATE_SCREENSHOT_ENV) == "1"
    screenshot = README_SCREENSHOT if update else tmp_path / "dashboard.png"

    async with running_stack(redis_url, hub) as (base, client, worker_id):
        # a workload: finished, failed and waiting instances
        done_ids = [
            await client.schedule_new_orchestration(greetings, input=[f"user{n}", "ops"]) for n in range(3)
        ]
        failed_id = await client.schedule_new_orchestration(broken, input={"card": "4242"})
        await client.schedule_new_orchestration(approval, input={"amount": 120}, instance_id="approve-me")
        await client.schedule_new_orchestration(approval, input={"amount": 99}, instance_id="cancel-me")
        for iid in [*done_ids, failed_id]:
            await client.wait_for_orchestration_completion(iid, timeout=30)
        for iid in ("approve-me", "cancel-me"):
            await client.wait_for_orchestration_start(iid, timeout=30)
        entities = hasattr(client, "signal_entity") and hasattr(client, "get_entity")
        if entities:
            await client.signal_entity("@counter@visits", "add", input=3)

        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1360, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(base + "/")

                # the server wants a token: the page asks for it
                await expect(page.get_by_test_id("auth-dialog")).to_be_visible()
                await page.get_by_test_id("token-input").fill(TOKEN)
                await page.get_by_test_id("token-save").click()
                await expect(page.get_by_test_id("auth-dialog")).to_be_hidden()
                await expect(page.get_by_test_id("hub-name")).to_have_text(hub)
                await expect(page.get_by_test_id("worker-id")).to_have_text(worker_id)

                rows = page.get_by_test_id("instance-row")
                await expect(rows).to_have_count(6)

                # filter by status
                await page.get_by_test_id("status-filter").select_option("RUNNING")
                await expect(rows).to_have_count(2)
                for status in await rows.evaluate_all("rs => rs.map(r => r.dataset.status)"):
                    assert status == "RUNNING"
                await page.get_by_test_id("status-filter").select_option("FAILED")
                await expect(rows).to_have_count(1)
                await expect(rows.first).to_have_attribute("data-instance-id", failed_id)
                await page.get_by_test_id("status-filter").select_option("")
                await expect(rows).to_have_count(6)

                # search by id, then open the instance
                await page.get_by_test_id("search-input").fill("approve")
                await expect(rows).to_have_count(1)
                await rows.first.click()
                await expect(page.get_by_test_id("view-instance")).to_be_visible()
                await expect(page.get_by_test_id("detail-instance-id")).to_have_text("approve-me")
                await expect(page.get_by_test_id("detail-status")).to_have_text("RUNNING")
                await expect(page.get_by_test_id("detail-name")).to_have_text("approval")
                await expect(page.get_by_test_id("detail-input")).to_contain_text('"amount": 120')
                await expect(page.get_by_test_id("detail-custom-status")).to_contain_text(
                    "waiting for approval"
                )
                timeline = page.get_by_test_id("history-event")
                await expect(timeline.filter(has_text="ExecutionStarted")).to_have_count(1)

                # raise the event, through the confirmation dialog
                await page.get_by_test_id("action-raise-event").click()
                await page.get_by_test_id("event-name").fill("approve")
                await page.get_by_test_id("event-data").fill('{"by": "dashboard"}')
                await page.get_by_test_id("event-submit").click()
                await expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
                await expect(page.get_by_test_id("confirm-message")).to_contain_text("approve")
                await page.get_by_test_id("confirm-ok").click()
                await expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
                await expect(page.get_by_test_id("detail-status")).to_have_text("COMPLETED")
                await expect(page.get_by_test_id("detail-output")).to_contain_text('"by": "dashboard"')
                await expect(
                    page.locator('[data-testid="history-event"][data-kind="EventRaised"]')
                ).to_have_count(1)
                await expect(
                    page.locator('[data-testid="history-event"][data-kind="ExecutionCompleted"]')
                ).to_contain_text("COMPLETED")
                await expect(page.get_by_test_id("action-raise-event")).to_be_disabled()
                state = await client.get_orchestration_state("approve-me")
                assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
                assert state.output == {"request": {"amount": 120}, "decision": {"by": "dashboard"}}

                # screenshot of the instance detail with its history timeline
                await page.screenshot(path=str(screenshot), full_page=True)

                # an exact id in the search box opens that instance; cancelling changes nothing
                await page.get_by_test_id("back-to-list").click()
                await expect(page.get_by_test_id("view-instances")).to_be_visible()
                await page.get_by_test_id("search-input").fill("cancel-me")
                await page.get_by_test_id("search-input").press("Enter")
                await expect(page.get_by_test_id("detail-instance-id")).to_have_text("cancel-me")
                await expect(page.get_by_test_id("detail-status")).to_have_text("RUNNING")
                await page.get_by_test_id("action-terminate").click()
                await expect(page.get_by_test_id("confirm-message")).to_contain_text("cancel-me")
                await page.get_by_test_id("confirm-cancel").click()
                await expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
                state = await client.get_orchestration_state("cancel-me")
                assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
                await page.get_by_test_id("action-terminate").click()
                await page.get_by_test_id("confirm-ok").click()
                await expect(page.get_by_test_id("detail-status")).to_have_text("TERMINATED")
                await expect(page.get_by_test_id("toast")).to_contain_text("Terminate requested")
                await expect(
                    page.locator('[data-testid="history-event"][data-kind="ExecutionTerminated"]')
                ).to_have_count(1)
                await expect(page.get_by_test_id("action-purge")).to_be_enabled()
                await expect(page.get_by_test_id("action-restart")).to_be_enabled()
                await expect(page.get_by_test_id("action-rewind")).to_be_disabled()  # only FAILED ones

                # purge it (confirmed), back to the list without it
                await page.get_by_test_id("action-purge").click()
                await page.get_by_test_id("confirm-ok").click()
                await expect(page.get_by_test_id("view-instances")).to_be_visible()
                await page.get_by_test_id("search-input").fill("")
                await expect(rows).to_have_count(5)
                assert await client.get_orchestration_state("cancel-me") is None

                # partitions: all owned by the one worker
                await page.get_by_test_id("tab-partitions").click()
                partition_rows = page.get_by_test_id("partition-row")
                await expect(partition_rows).to_have_count(PARTITIONS)
                for owner in await partition_rows.evaluate_all("rs => rs.map(r => r.dataset.owner)"):
                    assert owner == worker_id
                await expect(page.get_by_test_id("scale-recommended")).to_have_text("1")

                # workers
                await page.get_by_test_id("tab-workers").click()
                await expect(page.get_by_test_id("worker-row")).to_have_count(1)
                await expect(page.get_by_test_id("worker-row")).to_contain_text(worker_id)

                # entities: the list, an entity's state, and a signal sent from the page
                await page.get_by_test_id("tab-entities").click()
                notice = page.get_by_test_id("entities-support-notice")
                if entities:
                    await expect(notice).to_be_hidden()
                    row = page.locator('[data-testid="entity-row"][data-entity-id="@counter@visits"]')
                    await row.click()
                    await expect(page.get_by_test_id("entity-state")).to_have_text("3")
                    await page.get_by_test_id("signal-operation").fill("add")
                    await page.get_by_test_id("signal-input").fill("4")
                    await page.get_by_test_id("signal-submit").click()
                    await expect(page.get_by_test_id("confirm-message")).to_contain_text("@counter@visits")
                    await page.get_by_test_id("confirm-ok").click()
                    await expect(page.get_by_test_id("entity-state")).to_have_text("7")
                    state_of = await client.get_entity("@counter@visits")
                    assert state_of is not None and state_of.state == 7
                else:
                    await expect(notice).to_be_visible()
                    await expect(page.get_by_test_id("entities-empty")).to_be_visible()

                # live throughput, polled from /metrics every 2 s
                await expect(page.get_by_test_id("throughput-value")).to_have_text(re.compile(r"^\d+\.\d$"))
                finished = int(await page.get_by_test_id("finished-total").inner_text())
                assert finished >= 6  # process-wide counter: at least this test's instances

                assert errors == [], errors
            finally:
                await browser.close()
    assert screenshot.stat().st_size > 10_000
