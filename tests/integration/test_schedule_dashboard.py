"""The dashboard's schedules view in a real headless Chromium, against a real worker and Redis.

Skips only when no Chromium binary can be found (see test_dashboard_browser.py)."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import anyio
import pytest
from test_dashboard_browser import CHROMIUM_ARGS, anyio_backend, chromium  # noqa: F401

from durable import AsyncClient, ScheduleStatus, Worker, WorkerConfig
from durable._ops.server import serve_ops

pytestmark = pytest.mark.anyio
TOKEN = "schedule-view-token"


def nightly(ctx: Any, value: Any) -> Any:
    return value


async def test_schedules_view(redis_url: str, hub: str, chromium: str, tmp_path: Any) -> None:  # noqa: F811
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    expect.set_options(timeout=20_000)
    worker = Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    worker.add_orchestrator(nightly)
    async with worker, AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        runtime = worker._runtime
        assert runtime is not None
        port = await tg.start(serve_ops, runtime, client, "127.0.0.1", 0, TOKEN)
        await client.create_schedule(
            "nightly-export", nightly, cron="0 2 * * *", timezone="Europe/Amsterdam", input={"to": "s3"}
        )
        await client.create_schedule("hourly-sync", nightly, interval=dt.timedelta(hours=1), paused=True)
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 1360, "height": 700})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.add_init_script(f"localStorage.setItem('durable.opsToken', '{TOKEN}')")
                await page.goto(f"http://127.0.0.1:{port}/#/schedules")
                rows = page.get_by_test_id("schedule-row")
                await expect(rows).to_have_count(2)
                export = page.locator('[data-schedule-id="nightly-export"]')
                await expect(export).to_have_attribute("data-status", "ACTIVE")
                await expect(export).to_contain_text("0 2 * * * (Europe/Amsterdam)")
                await expect(page.locator('[data-schedule-id="hourly-sync"]')).to_contain_text("every 3600s")

                # pause it, with confirmation
                await export.get_by_test_id("schedule-toggle").click()
                await page.get_by_test_id("confirm-ok").click()
                await expect(export).to_have_attribute("data-status", "PAUSED")
                desc = await client.get_schedule("nightly-export")
                assert desc is not None and desc.status == ScheduleStatus.PAUSED

                # trigger a run: it shows up as the last run, linked to the instance
                await export.get_by_test_id("schedule-trigger").click()
                await page.get_by_test_id("confirm-ok").click()
                await expect(page.get_by_test_id("toast")).to_contain_text("Started nightly-export@")
                for _ in range(200):
                    desc = await client.get_schedule("nightly-export")
                    if desc is not None and desc.last_instance_id:
                        break
                    await anyio.sleep(0.05)  # the entity starts it (a signal has no reply to await)
                assert desc is not None and desc.last_instance_id
                await page.get_by_test_id("refresh-schedules").click()
                await export.locator("a").click()
                await expect(page.get_by_test_id("view-instance")).to_be_visible()
                await client.wait_for_orchestration_completion(desc.last_instance_id, timeout=30)

                # filter by status
                await page.goto(f"http://127.0.0.1:{port}/#/schedules")
                await page.get_by_test_id("schedule-status-filter").select_option("PAUSED")
                await expect(rows).to_have_count(2)
                await page.get_by_test_id("schedule-prefix-filter").fill("hourly")
                await page.get_by_test_id("schedule-prefix-filter").press("Enter")
                await page.get_by_test_id("schedule-prefix-filter").blur()
                await expect(rows).to_have_count(1)
                if os.environ.get("DURABLE_SCREENSHOT_DIR"):
                    await page.screenshot(
                        path=os.path.join(os.environ["DURABLE_SCREENSHOT_DIR"], "schedules.png")
                    )
                assert errors == []
            finally:
                await browser.close()
        tg.cancel_scope.cancel()
