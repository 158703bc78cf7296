"""Define tasks, run a worker, trigger work — the smallest complete Taskyard program.

    uv run taskyard engine                           # terminal 1: the engine
    uv run python examples/hello_world.py worker     # terminal 2: a worker
    uv run python examples/hello_world.py trigger    # terminal 3: run some tasks

With no TASKYARD_URL/TASKYARD_TOKEN set, the SDK talks to the local engine with the token the
engine wrote to .taskyard/token.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from pydantic import BaseModel

from taskyard_sdk import Context, NonRetryableError, TaskFailed, Taskyard

ty = Taskyard()


class Document(BaseModel):
    title: str
    text: str


class Stats(BaseModel):
    title: str
    words: int
    top: list[tuple[str, int]]


@ty.task(retries=2, execution_timeout="30s")
async def word_count(doc: Document, ctx: Context) -> Stats:
    """Async task: count words (retried twice on failure)."""
    if not doc.text.strip():
        raise NonRetryableError(f"document {doc.title!r} is empty")  # retrying cannot help
    ctx.log(f"counting words of {doc.title!r} (attempt {ctx.attempt})")
    counts = Counter(word.strip(".,!?").lower() for word in doc.text.split())
    return Stats(title=doc.title, words=sum(counts.values()), top=counts.most_common(3))


@ty.task
def shout(text: str) -> str:
    """Sync task: runs on the worker's own thread pool."""
    return text.upper() + "!"


def worker() -> None:
    ty.worker("hello-worker", tasks=[word_count, shout], slots=10).start()


def trigger() -> None:
    stats = word_count.run(Document(title="greeting", text="Hello world, hello Taskyard!"))
    print(f"{stats.title}: {stats.words} words, top {stats.top}")
    print(shout.run("tasks are fun"))
    results = word_count.run_many(
        [Document(title=f"doc {i}", text="a b a " * i) for i in range(1, 4)]
    )
    print("batch:", [r.words for r in results if isinstance(r, Stats)])
    try:
        word_count.run(Document(title="blank", text=" "))
    except TaskFailed as failure:
        print(f"failed as expected: {failure.error.message if failure.error else failure}")


async def trigger_async() -> None:
    """The same, from async code: every method has an `aio_` twin."""
    stats = await word_count.aio_run(Document(title="async", text="one two two"))
    print(f"async: {stats.words} words")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "trigger"
    if command == "worker":
        worker()
    elif command == "trigger":
        trigger()
        asyncio.run(trigger_async())
    else:
        sys.exit(f"usage: {sys.argv[0]} worker|trigger")
