"""Page views written to the analytics database in bulk: every view is triggered as a run of its
own (the web app calls `record.run_no_wait(view)` per request), and a batch task writes them
with one multi-row INSERT per batch instead of one per view.

    createdb analytics
    uv run taskyard engine                                                 # terminal 1
    ANALYTICS_DATABASE_URL=postgresql:///analytics \\
        uv run python examples/bulk_insert.py worker                       # terminal 2
    ANALYTICS_DATABASE_URL=postgresql:///analytics \\
        uv run python examples/bulk_insert.py demo                         # terminal 3

`@ty.batch_task(max_size=200, max_wait="500ms", key="input.site")` has the engine gather queued
views of one site (each site's rows go to its own partition, say) and hand up to 200 of them to
one attempt, as soon as 200 wait or the oldest has waited half a second. Each view still has its
own run and its own output (the row's id); a failed INSERT fails the batch, and each run is
retried on its own. `demo` records 1,000 views of two sites and prints how many INSERT
statements (round trips to the database) wrote them.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from pydantic import BaseModel

from taskyard_sdk import BatchContext, Taskyard

ty = Taskyard()

DATABASE_URL = os.environ.get("ANALYTICS_DATABASE_URL", "postgresql:///analytics")
SCHEMA = """
CREATE TABLE IF NOT EXISTS page_views (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL,
    path text NOT NULL,
    visitor text NOT NULL
);
CREATE TABLE IF NOT EXISTS page_view_inserts (batch_size integer NOT NULL);
"""


class PageView(BaseModel):
    site: str
    path: str
    visitor: str


@ty.batch_task(max_size=200, max_wait="500ms", key="input.site", retries=3)
async def record(views: list[PageView], ctx: BatchContext) -> list[int]:
    """One INSERT for the whole batch; each run gets the id of its own row."""
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        async with conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO page_views (site, path, visitor) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) RETURNING id",
                [v.site for v in views],
                [v.path for v in views],
                [v.visitor for v in views],
            )
            # What the demo counts: one row per INSERT statement, with its size.
            await conn.execute("INSERT INTO page_view_inserts VALUES ($1)", len(views))
    finally:
        await conn.close()
    ctx.log(f"wrote {len(views)} views of {views[0].site} in one INSERT")
    return [row["id"] for row in rows]


async def demo() -> None:
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute(SCHEMA)
    await conn.execute("TRUNCATE page_views, page_view_inserts")
    views = [
        PageView(site=site, path=f"/post/{n % 37}", visitor=f"v{n}")
        for n in range(500)
        for site in ("blog.example.com", "shop.example.com")
    ]
    # As a web app would: one run per view (here triggered, and waited for, in one call each).
    ids = await record.aio_run_many(views, timeout=60)
    inserts = await conn.fetchval("SELECT count(*) FROM page_view_inserts")
    largest = await conn.fetchval("SELECT max(batch_size) FROM page_view_inserts")
    stored = await conn.fetchval("SELECT count(*) FROM page_views")
    await conn.close()
    print(f"{len(ids)} views recorded, each with its own row id: {len(set(ids)) == len(ids)}")
    print(f"rows stored: {stored}")
    print(f"INSERT statements: {inserts} (largest batch {largest}), instead of {len(views)}")
    await ty.aio_close()


def worker() -> None:
    async def prepare() -> None:
        conn = await asyncpg.connect(DATABASE_URL)
        await conn.execute(SCHEMA)
        await conn.close()

    asyncio.run(prepare())
    ty.worker("analytics-writer", tasks=[record], slots=4).start()


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "worker"
    if command == "worker":
        worker()
    elif command == "demo":
        asyncio.run(demo())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|demo")
