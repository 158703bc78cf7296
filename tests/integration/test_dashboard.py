"""The dashboard in a real browser (the system's Chromium, driven by Playwright): signing in by
the engine's link, runs arriving live, a workflow's graph, a failure's error and logs, cancel and
replay, filters, tenants kept apart, and forms refused without their CSRF token. Screenshots of the
pages go to docs/img/ (docs/dashboard.md shows them)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect
from pydantic import BaseModel, Field

from taskyard.actors.changes import ChangeFeed
from taskyard.engine import Engine
from taskyard.http.dashboard import sign_in_link
from taskyard.http.dashboard.page import COOKIE, csrf_of
from taskyard.testing import free_port
from taskyard_sdk import (
    Concurrency,
    Context,
    DurableContext,
    RateLimit,
    TaskFailed,
    Taskyard,
    Workflow,
)
from tests.conftest import TenantTokens, engine_settings
from tests.support import Inbox, wait_until

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
expect.set_options(timeout=15_000)  # a loaded machine runs the other tests beside these
CHROMIUM = os.environ.get("TASKYARD_TEST_CHROMIUM") or shutil.which("chromium") or ""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM:
        pytest.fail(
            "the dashboard tests need Chromium: `apt-get install -y chromium` (or set "
            "TASKYARD_TEST_CHROMIUM to a Chromium binary)"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser, engine: Engine, data_dir: Path) -> AsyncIterator[Page]:
    """A page signed in as the local tenant's admin, by the link the engine prints."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    opened = await context.new_page()
    token = (data_dir / "token").read_text().strip()
    await opened.goto(sign_in_link(engine.url, token))
    await expect(opened.locator("h1")).to_have_text("Runs")
    try:
        yield opened
    finally:
        await context.close()


def signed_in(engine: Engine, data_dir: Path) -> aiohttp.ClientSession:
    """An HTTP session with the local token's dashboard cookie (no browser)."""
    token = (data_dir / "token").read_text().strip()
    return aiohttp.ClientSession(base_url=engine.url, headers={"Cookie": f"{COOKIE}={token}"})


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_the_link_signs_in_and_runs_arrive_live(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    cookie = next(c for c in await page.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert "#" not in page.url  # the token left the address bar
    await expect(page.locator("td.empty")).to_contain_text("No runs yet")

    @ty.task(name="greet")
    async def greet(name: str, ctx: Context) -> str:
        ctx.log(f"greeting {name}")
        return f"hello, {name}"

    async with ty.worker("hello", tasks=[greet]):
        handles = [await greet.aio_run_no_wait(name) for name in ("ada", "grace", "alan")]
        for handle in handles:
            await handle.aio_result()
        for handle in handles:  # no reload: the page was told the runs changed
            row = page.locator(f'tr[data-run="{handle.run_id}"]')
            await expect(row).to_have_attribute("data-status", "succeeded")
    await screenshot(page, "runs")

    await page.click(f'tr[data-run="{handles[0].run_id}"] a')
    await expect(page.locator("#run-status")).to_have_text("succeeded")
    await expect(page.locator("#output")).to_contain_text("hello, ada")
    await expect(page.locator("#logs")).to_contain_text("greeting ada")


async def test_a_workflow_run_shows_its_graph_with_each_step_state(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    gate = asyncio.Event()
    signup: Workflow[str] = ty.workflow("signup", input=str)

    @signup.task()
    async def account(email: str) -> str:
        return email.split("@")[0]

    @signup.task(parents=[account])
    async def welcome(email: str, ctx: Context) -> str:
        await gate.wait()
        return f"welcome {ctx.parent_output(account)}"

    @signup.task(parents=[account])
    async def crm(email: str) -> bool:
        return True

    async with ty.worker("signup", workflows=[signup]):
        handle = await signup.aio_run_no_wait("ada@example.com")
        await page.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
        steps = page.locator(".dag-steps li")
        await expect(page.locator('.dag-steps li[data-step="account"]')).to_have_attribute(
            "data-status", "succeeded"
        )
        await expect(page.locator('.dag-steps li[data-step="welcome"]')).to_have_attribute(
            "data-status", "running"
        )
        await expect(steps).to_have_count(3)
        await expect(page.locator("#dag canvas").first).to_be_visible()  # Cytoscape drew it
        gate.set()
        await handle.aio_result()
        await expect(page.locator("#run-status")).to_have_text("succeeded")
        for step in ("account", "welcome", "crm"):
            await expect(page.locator(f'.dag-steps li[data-step="{step}"]')).to_have_attribute(
                "data-status", "succeeded"
            )
        drawn = await page.locator("#dag").get_attribute("data-drawn")
        assert drawn is not None
        assert "welcome:succeeded" in drawn
    await screenshot(page, "workflow-run")

    await page.click('.dag-steps li[data-step="welcome"] a')
    await expect(page.locator("h1")).to_contain_text("signup:welcome")
    await expect(page.locator("#output")).to_contain_text("welcome ada")


async def test_a_failed_run_shows_its_error_traceback_and_logs(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    @ty.task(name="charge", retries=1)
    async def charge(amount: int, ctx: Context) -> None:
        ctx.log(f"charging {amount}", level="warning")
        raise ValueError(f"card declined for {amount}")

    async with ty.worker("payments", tasks=[charge]):
        handle = await charge.aio_run_no_wait(42)
        with pytest.raises(TaskFailed):
            await handle.aio_result()
    await page.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
    await expect(page.locator("#run-status")).to_have_text("failed")
    failure = page.locator(".failure")
    await expect(failure).to_contain_text("ValueError: card declined for 42")
    await expect(failure.locator(".traceback")).to_contain_text("raise ValueError")
    await expect(page.locator(".attempts tbody tr")).to_have_count(2)
    await expect(page.locator("#logs .log-warning").first).to_contain_text("charging 42")
    await screenshot(page, "run-failed")

    await page.goto(f"{engine.url}/dashboard/runs?status=failed")
    await expect(page.locator("tbody tr")).to_have_count(1)
    await expect(page.locator(f'tr[data-run="{handle.run_id}"]')).to_be_visible()
    await page.goto(f"{engine.url}/dashboard/runs?status=succeeded")
    await expect(page.locator("td.empty")).to_contain_text("match this filter")


async def test_cancel_and_replay_from_the_run_page(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    @ty.task(name="long")
    async def long(n: int) -> int:
        started.set()
        await finish.wait()
        return n

    async with ty.worker("long", tasks=[long]):
        handle = await long.aio_run_no_wait(7)
        await started.wait()
        await page.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
        await expect(page.locator("#run-status")).to_have_text("running")
        await page.click("button:has-text('Cancel')")
        await expect(page.locator("#run-status")).to_have_text("cancelled")
        view = await ty.runs.aio_get(handle.run_id)
        assert view.status.value == "cancelled"

        finish.set()
        await page.click("button:has-text('Replay')")
        await expect(page.locator("#run-status")).to_have_text("succeeded")
        await expect(page.locator(".attempts tbody tr")).to_have_count(2)


async def test_a_run_page_streams_chunks_and_tails_more_logs_than_one_page(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    watching = asyncio.Event()
    more = asyncio.Event()

    @ty.task(name="chatty")
    async def chatty(lines: int, ctx: Context) -> int:
        await watching.wait()
        for n in range(lines):
            ctx.log(f"line {n}")
        ctx.stream({"progress": 0.5})
        ctx.stream("halfway <there>")
        await more.wait()
        ctx.log("the last line")
        return lines

    async with ty.worker("chatty", tasks=[chatty]):
        handle = await chatty.aio_run_no_wait(1200)
        await page.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
        await expect(page.locator("#run-status")).to_have_text("running")
        watching.set()
        stream = page.locator("#stream")
        await expect(stream.locator(".chunk").first).to_have_text('{"progress":0.5}')
        await expect(stream.locator(".chunk").nth(1)).to_have_text("halfway <there>")  # escaped
        logs = page.locator("#logs span[class^=log-]")
        await expect(logs).to_have_count(1200)  # three pages of lines, no reload
        more.set()
        await handle.aio_result()
        await expect(logs).to_have_count(1201)
        await expect(logs.last).to_contain_text("the last line")
        await expect(page.locator("#run-status")).to_have_text("succeeded")
    await page.reload()
    await expect(page.locator("#logs span[class^=log-]")).to_have_count(1201)
    await expect(page.locator("#stream")).to_have_count(0)  # an ended run streams nothing


async def test_runs_are_filtered_by_the_worker_their_latest_attempt_went_to(
    page: Page, engine: Engine, ty: Taskyard, data_dir: Path
) -> None:
    @ty.task(name="square")
    async def square(n: int) -> int:
        return n * n

    ran: dict[str, list[str]] = {}
    for name, numbers in (("first", [1, 2]), ("second", [3, 4, 5])):
        async with ty.worker(name, tasks=[square]):
            handles = [await square.aio_run_no_wait(n) for n in numbers]
            for handle in handles:
                await handle.aio_result()
            [worker] = await ty.transport.request("GET", "/api/v1/workers")
            ran[worker["worker_id"]] = [str(handle.run_id) for handle in handles]
            if name == "second":
                await page.goto(f"{engine.url}/dashboard/workers")
                await page.click("text=its runs")
    second = next(worker_id for worker_id, runs in ran.items() if len(runs) == 3)
    await expect(page.locator("input[name=worker]")).to_have_value(second)
    rows = page.locator("table.runs tbody tr[data-run]")
    await expect(rows).to_have_count(3)
    assert sorted(await rows.evaluate_all("rows => rows.map(r => r.dataset.run)")) == sorted(
        ran[second]
    )
    await expect(page.locator('[data-count="succeeded"]')).to_contain_text("3")
    await expect(page.locator("#worker-search")).to_contain_text("newest 10,000 runs")
    await expect(page.locator("#cancel-matching")).to_have_count(0)  # ticked runs only

    await page.goto(f"{engine.url}/dashboard/runs?worker=not-an-id")
    await expect(page.locator("[role=alert]")).to_contain_text("worker")
    token = (data_dir / "token").read_text().strip()
    async with signed_in(engine, data_dir) as session:
        form = {"csrf": csrf_of(token), "action": "cancel", "filter": f"worker={second}"}
        async with session.post("/dashboard/runs/bulk?scope=matching", data=form) as response:
            assert response.status == 422
            assert "only when ticked" in await response.text()


async def test_a_durable_run_shows_its_log_and_the_wait_it_is_in(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    @ty.durable_task(name="onboard")
    async def onboard(user: str, ctx: DurableContext) -> str:
        await ctx.memo("greet", str.upper, user)
        payload = await ctx.wait_for_event("user:verified", timeout="1h")
        return f"{user} verified by {payload['by']}"

    async with ty.worker("onboarding", tasks=[onboard]):
        handle = await onboard.aio_run_no_wait("ada")
        await page.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
        waiting = page.locator('table.durable tr[data-done="false"]')
        await expect(waiting).to_contain_text("waiting now")
        await expect(waiting).to_contain_text("user:verified")
        await expect(page.locator('table.durable tr[data-position="0"]')).to_contain_text("ADA")
        await expect(page.locator("dd.waiting")).to_contain_text("user:verified")
        first = page.locator("table.attempts tbody tr").first
        await expect(first).to_contain_text("pending")
        # Its worker and start, kept though the suspended run's row has let them go.
        await expect(first.locator("td").nth(2)).not_to_be_empty()
        await expect(first.locator("td").nth(4)).not_to_be_empty()
        await screenshot(page, "durable-run")
        await ty.events.aio_push("user:verified", {"by": "email"})
        await handle.aio_result()
        await expect(page.locator("#run-status")).to_have_text("succeeded")  # live
        await expect(page.locator('table.durable tr[data-done="false"]')).to_have_count(0)


async def test_another_tenants_run_is_not_found(
    browser: Browser, engine: Engine, ty: Taskyard, tenant: TenantTokens
) -> None:
    @ty.task(name="mine")
    async def mine(n: int) -> int:
        return n

    handle = await mine.aio_run_no_wait(1)
    context = await browser.new_context()
    try:
        other = await context.new_page()
        await other.goto(sign_in_link(engine.url, tenant.admin))
        await expect(other.locator("td.empty")).to_contain_text("No runs yet")
        response = await other.goto(f"{engine.url}/dashboard/runs/{handle.run_id}")
        assert response is not None
        assert response.status == 404
        await expect(other.locator("[role=alert]")).to_contain_text("in this tenant")
    finally:
        await context.close()


async def test_signing_in_is_required_and_a_bad_token_is_refused(
    browser: Browser, engine: Engine
) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{engine.url}/dashboard/runs?status=failed")
        assert "/dashboard/sign-in" in page.url
        await page.fill("input[name=token]", "ty_not-a-token")
        await page.click("button:has-text('Sign in')")
        await expect(page.locator(".error")).to_contain_text("invalid or has been revoked")
        await page.goto(f"{engine.url}/")
        assert "/dashboard/sign-in" in page.url
    finally:
        await context.close()


async def test_a_revoked_token_is_signed_out_at_once(
    browser: Browser, engine: Engine, tenant: TenantTokens, http: aiohttp.ClientSession
) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(sign_in_link(engine.url, tenant.client))
        await expect(page.locator("h1")).to_have_text("Runs")
        async with http.get("/api/v1/tokens", headers=tenant.headers()) as response:
            tokens = await response.json()
        [client] = [t for t in tokens if t["role"] == "client"]
        async with http.delete(f"/api/v1/tokens/{client['token_id']}", headers=tenant.headers()):
            pass
        await page.reload()
        assert "/dashboard/sign-in" in page.url
    finally:
        await context.close()


async def test_a_form_without_its_csrf_token_changes_nothing(
    engine: Engine, ty: Taskyard, data_dir: Path
) -> None:
    @ty.task(name="queued_only")
    async def queued_only(n: int) -> int:
        return n

    handle = await queued_only.aio_run_no_wait(1)
    async with signed_in(engine, data_dir) as session:
        cancel = f"/dashboard/runs/{handle.run_id}/cancel"
        async with session.post(cancel, data={"csrf": "forged"}) as response:
            assert response.status == 400
            assert "did not come from the dashboard" in await response.text()
    assert (await ty.runs.aio_get(handle.run_id)).status.value == "queued"


async def test_live_pages_cost_nothing_when_nobody_watches(engine: Engine, data_dir: Path) -> None:
    changes: ChangeFeed = engine.services.actors.changes
    tenant = await engine.repository.tenant_named("default")
    assert tenant is not None
    assert not changes.wanted(tenant.tenant_id)

    async def watched() -> bool:
        return changes.wanted(tenant.tenant_id)

    async def unwatched() -> bool:
        return not changes.wanted(tenant.tenant_id)

    async with (
        signed_in(engine, data_dir) as session,
        session.get("/dashboard/live") as stream,
    ):
        assert stream.status == 200
        await wait_until(watched, 5, "the live page to watch")
    await wait_until(unwatched, 5, "the watch to end")


async def test_a_viewer_sees_everything_and_changes_nothing(
    browser: Browser, engine: Engine, tenant: TenantTokens, http: aiohttp.ClientSession
) -> None:
    trigger = {"task": "report", "input": 1, "options": {"schedule_timeout": 3600}}
    async with http.post("/api/v1/runs", json=trigger, headers=tenant.headers("client")) as sent:
        run_id = (await sent.json())["run_id"]
    async with http.post("/api/v1/runs", json=trigger, headers=tenant.headers("viewer")) as sent:
        assert sent.status == 403
        assert "viewer" in (await sent.json())["error"]["message"]
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(sign_in_link(engine.url, tenant.viewer))
        await expect(page.locator(".role")).to_have_text("viewer")
        await expect(page.locator(f'tr[data-run="{run_id}"]')).to_be_visible()
        await page.goto(f"{engine.url}/dashboard/runs/{run_id}")
        await expect(page.locator("#run-status")).to_have_text("queued")
        await expect(page.locator(".actions button")).to_have_count(0)
        cookies = await page.evaluate("() => document.cookie")  # the session cookie is HttpOnly
        assert COOKIE not in cookies
    finally:
        await context.close()
    headers = {"Cookie": f"{COOKIE}={tenant.viewer}"}
    async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as session:
        async with session.get(f"/dashboard/runs/{run_id}") as response:
            page_html = await response.text()
        assert 'name="csrf"' not in page_html  # no forms
        for part in (
            "runs",
            "tasks",
            "workers",
            "queues",
            "schedules",
            "events",
            "rate-limits",
            "alerts",
        ):
            async with session.get(f"/dashboard/{part}") as response:
                assert response.status == 200, part
                assert 'name="csrf"' not in await response.text(), part
        # Refused for its role (403) before its form token is even looked at (400).
        async with session.post(f"/dashboard/runs/{run_id}/cancel", data={"csrf": "x"}) as response:
            assert response.status == 403
            assert "changes nothing" in await response.text()
    async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers("viewer")) as got:
        assert (await got.json())["status"] == "queued"


async def test_bulk_replay_of_a_filtered_set_and_cancel_of_ticked_runs(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    tries: dict[int, int] = {}

    @ty.task(name="import_rows")
    async def import_rows(n: int) -> int:
        tries[n] = tries.get(n, 0) + 1
        if n % 2 and tries[n] == 1:
            raise RuntimeError(f"row {n} is locked")
        return n

    @ty.task(name="parked", schedule_timeout="1h")
    async def parked(n: int) -> int:
        return n

    async with ty.worker("importer", tasks=[import_rows]):
        handles = await import_rows.aio_run_many_no_wait(list(range(4)))
        await ty.runs.aio_wait([handle.run_id for handle in handles], timeout=30)
        await page.goto(f"{engine.url}/dashboard/runs?status=failed&task=import_rows")
        await expect(page.locator("tbody tr[data-run]")).to_have_count(2)
        # Counts per status are of the filter but for its status: the other statuses show.
        await expect(page.locator('[data-count="failed"]')).to_have_text("failed 2")
        await expect(page.locator('[data-count="succeeded"]')).to_have_text("succeeded 2")
        await screenshot(page, "runs-bulk")
        asked = await accept_dialogs(page)
        await page.click("#replay-matching")
        await expect(page.locator(".notice")).to_contain_text("Replayed 2 runs")
        assert asked == ["Replay every finished run this filter matches (up to 10,000)?"]
        views = await ty.runs.aio_wait([handle.run_id for handle in handles], timeout=30)
    assert {view.status.value for view in views.values()} == {"succeeded"}
    assert sorted(n for n, count in tries.items() if count == 2) == [1, 3]

    waiting = await parked.aio_run_many_no_wait([1, 2, 3])
    await page.goto(f"{engine.url}/dashboard/runs?task=parked")
    await page.check(f'input[name=run_id][value="{waiting[1].run_id}"]')
    await page.click("#bulk button:has-text('Cancel') >> nth=0")
    await expect(page.locator(".notice")).to_contain_text("Cancelled 1 run.")
    statuses = [(await ty.runs.aio_get(handle.run_id)).status.value for handle in waiting]
    assert statuses == ["queued", "cancelled", "queued"]


async def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirm() of the page; returns the questions asked, as they come."""
    asked: list[str] = []

    async def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    return asked


async def test_crons_are_paused_resumed_triggered_and_deleted_from_their_page(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    @ty.task(name="nightly")
    async def nightly(day: str) -> str:
        return f"report for {day}"

    cron = await nightly.aio_create_cron("reports", "0 3 * * *", input="today")
    once = await nightly.aio_schedule(datetime.now(UTC) + timedelta(days=2), input="later")
    asked = await accept_dialogs(page)
    await page.goto(f"{engine.url}/dashboard/schedules")
    row = page.locator(f'tr[data-cron="{cron.cron_id}"]')
    await expect(row).to_contain_text("0 3 * * *")
    await expect(page.locator(f'tr[data-schedule="{once.schedule_id}"]')).to_contain_text("waiting")
    await screenshot(page, "schedules")
    await row.locator("button:has-text('Pause')").click()
    await expect(row).to_have_attribute("data-paused", "true")
    assert (await ty.crons.aio_get(cron.cron_id)).paused
    await row.locator("button:has-text('Resume')").click()
    await expect(row).to_have_attribute("data-paused", "false")

    async with ty.worker("nightly", tasks=[nightly]):
        await row.locator("button:has-text('Trigger now')").click()
        await expect(page.locator("#run-status")).to_have_text("succeeded")
        await expect(page.locator("#output")).to_contain_text("report for today")
    await expect(page.locator(".facts")).to_contain_text("reports")  # metadata cron=reports

    await page.goto(f"{engine.url}/dashboard/schedules")
    await row.locator("button:has-text('Delete')").click()
    await expect(row).to_have_count(0)
    assert asked == ["Delete cron reports?"]
    assert [c.cron_id for c in await ty.crons.aio_list()] == []


async def test_events_are_listed_shown_with_their_runs_and_replayed(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    welcome: Workflow[dict[str, str]] = ty.workflow(
        "welcome", input=dict[str, str], on_events=["user:signed-up"]
    )

    @welcome.task()
    async def greet(user: dict[str, str]) -> str:
        return f"hi {user['name']}"

    async with ty.worker("welcome", workflows=[welcome]):
        pushed = await ty.events.aio_push("user:signed-up", {"name": "ada"})
        await ty.events.aio_push("order:paid", {"order": 7})
        await page.goto(f"{engine.url}/dashboard/events?prefix=user%3A")
        await expect(page.locator("tbody tr[data-event]")).to_have_count(1)
        await screenshot(page, "events")
        await page.click(f'tr[data-event="{pushed.event_id}"] a')
        await expect(page.locator("#payload")).to_contain_text('"name": "ada"')
        [run_id] = pushed.triggered
        await expect(page.locator(".triggered")).to_contain_text(str(run_id))
        await page.click("button:has-text('Replay')")
        await expect(page.locator(".facts")).to_contain_text(str(pushed.event_id))  # replay of
        again = page.url.rsplit("/", 1)[1]
        assert again != str(pushed.event_id)
        replayed = await ty.events.aio_get(again)
        assert replayed.replay_of == pushed.event_id
        assert len(replayed.triggered) == 1


class Invoice(BaseModel):
    customer: str
    cents: int = Field(ge=0)


async def test_a_task_is_triggered_from_its_form_checked_against_its_input_schema(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    @ty.task(name="bill", retries=2)
    async def bill(invoice: Invoice) -> str:
        return f"{invoice.customer} owes {invoice.cents}"

    async with ty.worker("billing", tasks=[bill]):
        await page.goto(f"{engine.url}/dashboard/tasks")
        await expect(page.locator('tr[data-task="bill"]')).to_contain_text("billing")
        await page.click('tr[data-task="bill"] a')
        await expect(page.locator("#schema")).to_contain_text('"cents"')
        await page.fill("textarea[name=input]", '{"customer": "acme", "cents": -5}')
        await page.click("button:has-text('Trigger')")
        await expect(page.locator(".error")).to_contain_text("cents: -5 is less than the minimum")
        await expect(page.locator("textarea[name=input]")).to_have_value(
            '{"customer": "acme", "cents": -5}'
        )  # kept, to be corrected
        await page.fill("textarea[name=input]", "{not json")
        await page.click("button:has-text('Trigger')")
        await expect(page.locator(".error")).to_contain_text("the input is not JSON")
        await page.fill("textarea[name=input]", '{"customer": "acme", "cents": 1200}')
        await page.fill("input[name=metadata]", "source=dashboard")
        await screenshot(page, "task-trigger")
        await page.click("button:has-text('Trigger')")
        await expect(page.locator("#run-status")).to_have_text("succeeded")
        await expect(page.locator("#output")).to_contain_text("acme owes 1200")
        await expect(page.locator(".facts")).to_contain_text("dashboard")
    runs = await ty.runs.aio_list(task=["bill"])
    assert len(runs.runs) == 1  # the refused inputs made no run


async def test_a_workflow_version_shows_its_graph_and_is_triggered_from_its_form(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    etl: Workflow[int] = ty.workflow("etl", input=int)

    @etl.task()
    async def extract(n: int) -> list[int]:
        return list(range(n))

    @etl.task(parents=[extract])
    async def load(n: int, ctx: Context) -> int:
        return sum(ctx.parent_output(extract))

    async with ty.worker("etl", workflows=[etl]):
        await page.goto(f"{engine.url}/dashboard/tasks")
        await expect(page.locator('tr[data-workflow="etl"]')).to_be_visible()
        await screenshot(page, "definitions")
        await page.click('tr[data-workflow="etl"] a')
        await expect(page.locator(".dag-steps li")).to_have_count(2)
        await expect(page.locator("#dag canvas").first).to_be_visible()
        await expect(page.locator("#definition")).to_contain_text('"parents"')
        await screenshot(page, "workflow")
        await page.fill("textarea[name=input]", "5")
        await page.click("button:has-text('Trigger')")
        await expect(page.locator("#run-status")).to_have_text("succeeded")
        await expect(page.locator("#output")).to_contain_text('"load": 10')
    response = await page.goto(f"{engine.url}/dashboard/workflows/etl?version=9")
    assert response is not None
    assert response.status == 404


async def test_rate_limits_show_their_usage_against_the_limit(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    await ty.rate_limits.aio_put("emails", limit=10, duration="minute")

    @ty.task(name="send_email", rate_limits=[RateLimit(key="emails", units=3)])
    async def send_email(to: str) -> str:
        return to

    await page.goto(f"{engine.url}/dashboard/rate-limits")
    row = page.locator('tr[data-key="emails"]')
    await expect(row).to_have_attribute("data-used", "0")
    async with ty.worker("mailer", tasks=[send_email]):
        await (await send_email.aio_run_no_wait("ada@example.com")).aio_result()
        await expect(row).to_have_attribute("data-used", "3")  # no reload: it refreshes itself
    await expect(row).to_contain_text("10 a minute")
    await expect(row).to_contain_text("7 left")
    await screenshot(page, "rate-limits")


class Export(BaseModel):
    account: str


async def test_queues_and_workers_show_depth_slots_keys_and_the_last_hour(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    gate = asyncio.Event()

    @ty.task(name="export", concurrency=Concurrency(expression="input.account", max_runs=1))
    async def export(job: Export) -> str:
        await gate.wait()
        return job.account

    async with ty.worker("exporter", tasks=[export], slots=4):
        handles = [
            await export.aio_run_no_wait(Export(account=account))
            for account in ("acme", "acme", "acme", "globex")
        ]
        await page.goto(f"{engine.url}/dashboard/queues")
        queue = page.locator('section.queue[data-queue="default"]')
        # One run of each key runs; acme's other two wait for the key.
        await expect(queue.locator('[data-fact="running"]')).to_have_text("2")
        await expect(queue.locator('[data-fact="queued"]')).to_have_text("2")
        await expect(queue.locator('[data-fact="slots"]')).to_have_text("2 / 4")
        await expect(queue.locator('[data-fact="oldest"]')).to_contain_text("ago")
        busiest = queue.locator("table.keys tbody tr").first
        await expect(busiest).to_have_attribute("data-key", "acme")
        await expect(busiest).to_contain_text("1 / 1")
        await expect(busiest.locator("td").nth(3)).to_have_text("2")
        await screenshot(page, "queues")

        await page.goto(f"{engine.url}/dashboard/workers")
        worker = page.locator("table.workers tbody tr").first
        await expect(worker.locator('[data-fact="slots"]')).to_have_text("2 / 4")
        await expect(worker.locator('[data-fact="heard"]')).to_contain_text("ago")
        await screenshot(page, "workers")

        gate.set()
        for handle in handles:
            await handle.aio_result()
        await page.goto(f"{engine.url}/dashboard/queues")
        # uPlot drew the hour: every attempt started and succeeded, none failed.
        chart = queue.locator(".chart")
        await expect(chart).to_have_attribute("data-drawn", "4,4,0")
        await expect(chart.locator("canvas")).to_be_visible()
        await expect(queue.locator('[data-fact="queued"]')).to_have_text("0")
        await expect(queue.locator(".waits + .note")).to_contain_text("Of 4 attempts")
        await expect(queue.locator("table.keys")).to_have_count(0)  # no key is held any more


async def test_pause_and_resume_buttons_on_the_queues_workers_and_tasks_pages(
    page: Page, engine: Engine, ty: Taskyard
) -> None:
    @ty.task(name="ship")
    async def ship(n: int) -> int:
        return n

    flow = ty.workflow("restock", input=int)

    @flow.task()
    async def order(n: int) -> int:
        return n

    async with ty.worker("shipper", tasks=[ship, flow]) as worker:
        await page.goto(f"{engine.url}/dashboard/queues")
        await ship.aio_run(0)  # the queue exists
        await page.reload()
        queue = page.locator('section.queue[data-queue="default"]')
        await queue.locator('button[data-pause="queue:default"]').click()
        await expect(queue).to_have_attribute("data-paused", "true")
        await expect(queue.locator("h2")).to_contain_text("paused")
        held = await ship.aio_run_no_wait(1)
        await asyncio.sleep(0.3)
        assert (await held.aio_get()).waiting_reason == "paused: queue 'default' is paused"
        await queue.locator('button[data-pause="queue:default"]').click()
        await expect(queue).to_have_attribute("data-paused", "false")
        assert await held.aio_result(timeout=10) == 1

        await page.goto(f"{engine.url}/dashboard/workers")
        row = page.locator(f'tr[data-worker="{worker.worker_id}"]')
        await row.locator("button[data-pause]").click()
        await expect(row).to_have_attribute("data-paused", "true")
        assert [p.name for p in await ty.pauses.aio_list()] == [str(worker.worker_id)]
        await row.locator("button[data-pause]").click()
        await expect(row).to_have_attribute("data-paused", "false")

        await page.goto(f"{engine.url}/dashboard/tasks")
        await page.locator('button[data-pause="task:ship"]').click()
        await expect(page.locator('tr[data-task="ship"]')).to_have_attribute("data-paused", "true")
        await page.locator('button[data-pause="workflow:restock"]').click()
        restock = page.locator('tr[data-workflow="restock"]')
        await expect(restock).to_have_attribute("data-paused", "true")
        assert {(p.kind.value, p.name) for p in await ty.pauses.aio_list()} == {
            ("task", "ship"),
            ("workflow", "restock"),
        }
        await page.locator('button[data-pause="workflow:restock"]').click()
        await expect(restock).to_have_attribute("data-paused", "false")


async def test_an_idempotency_key_opens_its_run(
    page: Page, engine: Engine, ty: Taskyard, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    @ty.task(name="charge_order", schedule_timeout="1h")
    async def charge_order(order: int) -> int:
        return order

    handle = await charge_order.aio_run_no_wait(42, idempotency_key="order-42")
    await page.goto(f"{engine.url}/dashboard/runs")
    await page.fill("input[name=key]", "order-42")
    await page.click("button:has-text('Filter')")
    await expect(page.locator(".facts")).to_contain_text(str(handle.run_id))
    response = await page.goto(f"{engine.url}/dashboard/runs?key=order-43")
    assert response is not None
    assert response.status == 404
    await expect(page.locator("[role=alert]")).to_contain_text("'order-43'")
    # Another tenant's run with the same key is not this tenant's.
    trigger = {"task": "charge_order", "input": 1, "idempotency_key": "order-7"}
    async with http.post("/api/v1/runs", json=trigger, headers=tenant.headers()) as sent:
        assert sent.status == 201
    response = await page.goto(f"{engine.url}/dashboard/runs?key=order-7")
    assert response is not None
    assert response.status == 404


async def test_an_admin_creates_and_revokes_tokens_and_nobody_else_may(
    page: Page, browser: Browser, engine: Engine, tenant: TenantTokens
) -> None:
    asked = await accept_dialogs(page)
    await page.goto(f"{engine.url}/dashboard/tokens")
    await page.fill("input[name=name]", "grafana")
    await page.select_option("select[name=role]", "viewer")
    await page.click("button:has-text('Create a token')")
    secret = (await page.locator("#secret").inner_text()).strip()
    assert secret.startswith("ty_")
    assert secret not in page.url  # shown in the page, never in an address
    row = page.locator("tr[data-token]", has_text="grafana")
    await expect(row).to_contain_text("viewer")
    await screenshot(page, "tokens")

    context = await browser.new_context()
    try:
        other = await context.new_page()
        await other.goto(sign_in_link(engine.url, secret))
        await expect(other.locator(".role")).to_have_text("viewer")
        await expect(other.locator("nav a", has_text="Tokens")).to_have_count(0)
        response = await other.goto(f"{engine.url}/dashboard/tokens")
        assert response is not None
        assert response.status == 403

        await page.reload()  # creates nothing again, and the secret is not shown again
        await expect(row).to_have_count(1)
        await expect(page.locator("#secret")).to_have_count(0)
        await row.locator("button:has-text('Revoke')").click()
        await expect(row).to_have_attribute("data-revoked", "true")
        assert asked == [
            "Revoke token grafana? Requests with it are refused at once, and its workers are "
            "cut off."
        ]
        await other.goto(f"{engine.url}/dashboard/runs")
        assert "/dashboard/sign-in" in other.url  # signed out at once
    finally:
        await context.close()


async def test_alert_rules_are_created_edited_and_deleted_and_an_alerts_link_opens_the_run(
    browser: Browser, db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    monkeypatch.setenv("TASKYARD_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKYARD_SMTP_PORT", str(smtp.port))
    monkeypatch.setenv("TASKYARD_SMTP_FROM", "taskyard@acme.test")
    try:
        async with Engine(engine_settings(db_url, data_dir, plugins=["email"])) as engine:
            token = (data_dir / "token").read_text().strip()
            ty = Taskyard(engine.url, token)
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            try:
                page = await context.new_page()
                page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                await page.goto(sign_in_link(engine.url, token))
                await page.click("nav >> text=Alerts")
                await expect(page.locator("td.empty")).to_contain_text("No alert rules")

                form = page.locator("form.alert-rule")
                await form.locator("select[name=channel]").select_option("email")
                await form.locator("textarea[name=target]").fill('{"to": 5}')
                await form.locator("button[type=submit]").click()
                await expect(page.locator("[role=alert]")).to_contain_text("target")
                await form.locator("textarea[name=target]").fill('{"to": ["ops@acme.test"]}')
                await form.locator("button[type=submit]").click()
                row = page.locator("table.alert-rules tbody tr[data-rule]")
                await expect(row).to_have_count(1)
                await expect(row).to_contain_text("everything")
                await expect(row.locator("[data-window]")).to_have_attribute("data-window", "300.0")

                await row.locator("text=Edit").click()
                await form.locator("input[name=tasks]").fill("explode")
                await form.locator("input[name=window]").fill("1m")
                await form.locator("button[type=submit]").click()
                await expect(row.locator("[data-window]")).to_have_attribute("data-window", "60.0")
                await expect(row).to_contain_text("tasks explode")
                await screenshot(page, "alerts")

                @ty.task(name="explode", retries=0)
                async def explode(n: int) -> int:
                    raise RuntimeError("the reactor overheated")

                async with ty.worker("reactor", tasks=[explode]):
                    handle = await explode.aio_run_no_wait(1)
                    with pytest.raises(TaskFailed):
                        await handle.aio_result()

                async def mailed() -> bool:
                    return bool(inbox.messages)

                await wait_until(mailed, 10, "the failure's email")
                body = inbox.messages[0].get_payload(decode=True).decode()
                [link] = [word for word in body.split() if "/dashboard/runs/" in word]
                assert link == f"{engine.url}/dashboard/runs/{handle.run_id}"
                await page.goto(link)
                await expect(page.locator("#run-status")).to_have_text("failed")
                await expect(page.locator(".failure")).to_contain_text("the reactor overheated")

                await page.goto(f"{engine.url}/dashboard/alerts")
                await row.locator("button.danger").click()
                await expect(page.locator("td.empty")).to_contain_text("No alert rules")
            finally:
                await context.close()
                await ty.aio_close()
    finally:
        smtp.stop()
