"""A worker's lifespan: resources opened once before its first task, handed to task functions by
type or by Depends, and closed after the drain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import pytest

from taskyard_sdk import Context, Depends, Taskyard, WorkerStopped


@dataclass
class Pool:
    """Stands in for a connection pool: counts what used it and whether it was closed."""

    queries: list[int] = field(default_factory=list)
    closed: bool = False


@dataclass
class Settings:
    greeting: str


async def test_tasks_get_the_lifespans_resources_by_type_and_by_name(ty: Taskyard) -> None:
    opened: list[Pool] = []
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, Any]]:
        pool = Pool()
        opened.append(pool)
        events.append("opened")
        yield {"pool": pool, "settings": Settings(greeting="hello")}
        pool.closed = True
        events.append("closed")

    @ty.task()
    async def query(n: int, pool: Pool) -> int:  # by type
        pool.queries.append(n)
        return len(pool.queries)

    @ty.task()
    def greet(
        name: str,
        ctx: Context,
        settings: Annotated[Settings, Depends("settings")],
        shout: Annotated[bool, Depends(lambda state: state["settings"].greeting.isupper())],
    ) -> str:  # by name and by function; a sync task, on the worker's threads
        events.append(f"greet {ctx.attempt}")
        return f"{settings.greeting} {name}{'!' if shout else ''}"

    async with ty.worker("resources", tasks=[query, greet], lifespan=lifespan):
        assert [await query.aio_run(n) for n in range(3)] == [1, 2, 3]
        assert await greet.aio_run("ana") == "hello ana"
        assert events == ["opened", "greet 1"]  # once per worker, not per run
    assert events == ["opened", "greet 1", "closed"]  # after the drain
    [pool] = opened
    assert pool.queries == [0, 1, 2]
    assert pool.closed
    # the same function with resources of a test's own, and no engine
    assert query.mock_run(5, resources={"pool": Pool()}) == 1
    assert greet.mock_run("bo", resources={"settings": Settings(greeting="HEY")}) == "HEY bo!"


async def test_a_dependency_the_lifespan_does_not_provide_stops_the_worker_at_start(
    ty: Taskyard,
) -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, Any]]:
        yield {"settings": Settings(greeting="hi")}

    @ty.task()
    async def needs_a_pool(n: int, pool: Pool) -> int:
        return n

    with pytest.raises(
        WorkerStopped,
        match=r"task 'needs_a_pool': parameter 'pool' wants a "
        r"Pool, and the worker's lifespan provides nothing",
    ):
        async with ty.worker("missing", tasks=[needs_a_pool], lifespan=lifespan):
            pass


def test_parameters_the_worker_cannot_fill_are_refused_when_declared(ty: Taskyard) -> None:
    with pytest.raises(TypeError, match="parameter 'extra' needs a type or Depends"):

        @ty.task()
        async def untyped(n: int, ctx: Context, extra) -> int:  # type: ignore[no-untyped-def]
            return n
