"""The dashboard's instance list pages (Load more) and filters by tag, in a real headless Chromium."""

from __future__ import annotations

import datetime as dt
import shutil

import anyio
import pytest

from durable import AsyncClient
from durable._ops.server import serve_ops

pytestmark = pytest.mark.anyio
LATER = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright's async API runs on asyncio


async def test_instance_list_loads_more_pages_and_filters_by_tag(redis_url: str, hub: str) -> None:
    chromium = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    if chromium is None:
        pytest.skip("no chromium binary on PATH; install it with ops/tools/ensure-chromium.sh")
    playwright_api = pytest.importorskip("playwright.async_api")
    expect = playwright_api.expect
    expect.set_options(timeout=20_000)
    async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        for i in range(130):  # scheduled far ahead: instances that cost no work
            tags = {"team": "red" if i % 10 == 0 else "blue"}
            await client.schedule_new_orchestration(
                "later", instance_id=f"i-{i:03d}", start_at=LATER, tags=tags
            )
        port = await tg.start(serve_ops, None, client, "127.0.0.1", 0, "")
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{port}/")
                rows = page.get_by_test_id("instance-row")
                await expect(rows).to_have_count(100)
                await expect(rows.first).to_have_attribute("data-instance-id", "i-129")
                await expect(page.get_by_test_id("load-more")).to_be_visible()
                await page.get_by_test_id("load-more").click()
                await expect(rows).to_have_count(130)
                await expect(rows.last).to_have_attribute("data-instance-id", "i-000")
                await expect(page.get_by_test_id("load-more")).to_be_hidden()
                ids = await rows.evaluate_all("rs => rs.map(r => r.dataset.instanceId)")
                assert len(set(ids)) == 130
                await page.get_by_test_id("tag-filter").fill("team=red")
                await page.get_by_test_id("tag-filter").press("Enter")
                await page.get_by_test_id("tag-filter").blur()
                await expect(rows).to_have_count(13)
                assert errors == []
            finally:
                await browser.close()
        tg.cancel_scope.cancel()
