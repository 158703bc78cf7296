"""The engine killed (kill -9) while it drains an outbox of 10,000 committed rows: after a restart
every row has become exactly one run, from an application database and from the engine's own."""

from __future__ import annotations

import asyncpg
import pytest

from taskyard_sdk import Taskyard
from taskyard_sdk import outbox as sdk_outbox
from tests.e2e.conftest import Deploy
from tests.support import connected, scalar, wait_until

pytestmark = pytest.mark.slow

ROWS = 10_000


async def fill(url: str) -> set[object]:
    """10,000 rows committed in one transaction, written through the SDK as an application
    would."""
    ty = Taskyard(url="http://127.0.0.1:1", token="unused")

    @ty.task(name="ledger")
    async def ledger(n: int) -> None: ...

    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            handles = await ledger.aio_run_many_in(conn, list(range(ROWS)))
        return {handle.run_id for handle in handles}
    finally:
        await conn.close()
        await ty.aio_close()


@pytest.mark.parametrize("where", ["application", "engine"])
async def test_engine_killed_while_draining_an_outbox_gives_each_row_one_run(
    where: str, db_url: str, empty_db_url: str, deploy: Deploy
) -> None:
    app_url = empty_db_url if where == "application" else db_url
    binding = f"default={empty_db_url}" if where == "application" else "default"
    await _install(app_url)
    deployment = deploy("--outbox", binding)
    expected = await fill(app_url)
    await wait_until(lambda: _runs_at_least(db_url, 1), 60, "the first runs", every=0.005)
    deployment.engine.kill()  # kill -9 mid-drain: batches claimed, some committed, some not
    left = await scalar(app_url, "SELECT count(*) FROM taskyard_outbox")
    drained = await scalar(db_url, "SELECT count(*) FROM runs")
    print(f"{where} outbox, kill -9 after {drained} runs, {left} rows left")
    assert left > 0, "the engine finished before it was killed: the test proved nothing"
    deployment.engine.start()
    await wait_until(lambda: _empty(app_url), 120, "the outbox to be drained")
    runs = await _run_ids(db_url)
    assert len(runs) == ROWS  # runs.run_id is unique per tenant: a duplicate would be counted
    assert set(runs) == expected


async def _install(url: str) -> None:
    async with connected(url) as conn:
        await sdk_outbox.aio_install(conn)


async def _runs_at_least(db_url: str, count: int) -> bool:
    return await scalar(db_url, "SELECT count(*) FROM runs") >= count


async def _empty(url: str) -> bool:
    return await scalar(url, "SELECT count(*) FROM taskyard_outbox") == 0


async def _run_ids(db_url: str) -> list[object]:
    async with connected(db_url) as conn:
        return [row["run_id"] for row in await conn.fetch("SELECT run_id FROM runs")]
