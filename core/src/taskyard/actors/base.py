"""A small actor runtime on asyncio.

An actor owns its state and is the only code that changes it. Others send it work with `tell`
(fire and forget) or `ask` (await the answer). Messages are handler methods of the actor plus
arguments, run one at a time in the actor's own task, in the order they were sent:

    queue.tell(queue.enqueue, runs)
    status = await queue.ask(queue.cancel, run_id, timeout=5)

Lifecycle: `start()` runs `on_start()` (which builds the state, e.g. from Postgres) and then serves
the mailbox; `stop()` is idempotent and safe before `start()`. When a handler raises anything but an
`ApiError` (an expected refusal, handed to the asker), the actor has crashed: its state may be
inconsistent, so the supervisor calls `on_failure()`, waits (exponential back-off) and runs
`on_start()` again, then carries on with the mailbox. Messages already queued are kept.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Generic, TypeVar

from taskyard.errors import ApiError

log = logging.getLogger(__name__)


class ActorStopped(RuntimeError):
    """The actor was stopped; it answers no more messages."""


class AskTimeout(TimeoutError):
    """The actor did not answer in time."""


_STOP = object()


def _expire(future: asyncio.Future[Any], name: str, handler: Any, timeout: float) -> None:
    if not future.done():
        future.set_exception(
            AskTimeout(
                f"actor {name} did not answer "
                f"{getattr(handler, '__name__', handler)} within "
                f"{timeout}s"
            )
        )


Message = tuple[Any, tuple[Any, ...], "asyncio.Future[Any] | None"]
T = TypeVar("T")


class SideTasks:
    """Tasks started beside their owner's own work (a read off the mailbox, a delivery, closing
    a socket): held until done, since the loop keeps only weak references to tasks, and cancelled
    together when the owner stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout: float | None = None) -> None:
        """Let the running ones finish, for up to `timeout` seconds."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def cancel(self) -> None:
        """Cancel every one and wait until all have stopped."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Mailbox(Generic[T]):
    """Items in arrival order, with one reader: an actor's messages, a socket's outgoing frames.
    A deque and a wake-up future: an asyncio.Queue costs several times more per item, and every
    request passes through a few of these."""

    __slots__ = ("_items", "_wakeup")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._wakeup: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def put_many(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        self._wake()

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        return self._items.popleft()

    def get_nowait(self) -> T:
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items


class Actor:
    restart_delay = 0.05
    restart_delay_max = 5.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.restarts = 0
        self._mailbox: Mailbox[Message] = Mailbox()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopped = False
        self.side_tasks = SideTasks()  # cancelled at stop, after on_stop

    # -- overridables ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Build the actor's state. Runs at start and again after every crash."""

    async def on_stop(self) -> None:
        """Release what the actor holds. Runs once, at stop; its side tasks are cancelled
        after it."""

    async def on_failure(self, error: BaseException) -> None:
        """Forget state that may be inconsistent after a crash (before `on_start` runs again)."""

    def after_message(self) -> None:
        """Called after every message handled: flush what the handler buffered (e.g. one
        batch of writes per message instead of one message per write)."""

    # -- messaging -------------------------------------------------------------------------------

    def tell(self, handler: Callable[..., Any], *args: Any) -> None:
        if self._stopped:
            raise ActorStopped(f"actor {self.name} is stopped")
        self._mailbox.put((handler, args, None))

    def _post(self, handler: Callable[..., Any], *args: Any) -> None:
        """A message from the actor's own side tasks; accepted even while stopping."""
        self._mailbox.put((handler, args, None))

    def _spawn_then(
        self, work: Coroutine[Any, Any, T], then: Callable[..., Any], *args: Any
    ) -> None:
        """Run `work` beside the mailbox (a read); its result comes back as the message
        `then(*args, result)`."""

        async def report() -> None:
            self._post(then, *args, await work)

        self.side_tasks.spawn(report(), name=f"{self.name}:{getattr(then, '__name__', 'side')}")

    async def ask(
        self, handler: Callable[..., Any], *args: Any, timeout: float | None = 30.0
    ) -> Any:
        if self._stopped:
            raise ActorStopped(f"actor {self.name} is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._mailbox.put((handler, args, future))
        if timeout is None:
            return await future
        # A timer, not wait_for: an ask is on every request's path. The handler, when it runs,
        # finds the future done (timed out, or cancelled with its asker) and leaves it be.
        expiry = loop.call_later(timeout, _expire, future, self.name, handler, timeout)
        try:
            return await future
        finally:
            expiry.cancel()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the actor and wait until its first `on_start` has finished (a second caller
        waits for the same)."""
        if self._task is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._supervise(), name=f"actor:{self.name}")
        assert self._ready is not None
        ready, task = self._ready, self._task
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            await task  # re-raise what ended the actor before it was ready

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            if self._ready is not None and self._ready.done():
                self._mailbox.put((_STOP, (), None))
                try:
                    await asyncio.wait_for(asyncio.shield(task), 10)
                except TimeoutError:
                    task.cancel()
            else:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.on_stop()
        await self.side_tasks.cancel()
        self._fail_pending(ActorStopped(f"actor {self.name} stopped"))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _supervise(self) -> None:
        delay = self.restart_delay
        while True:
            try:
                await self.on_start()
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                if await self._serve():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                log.exception("actor %s crashed; restarting in %.2fs", self.name, delay)
                try:
                    await self.on_failure(exc)
                except Exception:
                    log.exception("actor %s failed to clean up after a crash", self.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.restart_delay_max)
            else:
                delay = self.restart_delay

    async def _serve(self) -> bool:
        """Run messages until asked to stop (returns True); a crash propagates."""
        mailbox = self._mailbox
        while True:
            handler, args, future = await mailbox.get()
            if handler is _STOP:
                return True
            try:
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    result = await result
            except ApiError as refusal:
                if future is not None and not future.done():
                    future.set_exception(refusal)
                elif future is None:
                    log.warning("actor %s refused a message: %s", self.name, refusal)
            except Exception as exc:
                if future is not None and not future.done():
                    future.set_exception(exc)
                raise
            else:
                if future is not None and not future.done():
                    future.set_result(result)
            self.after_message()

    def _fail_pending(self, error: Exception) -> None:
        while not self._mailbox.empty():
            _, _, future = self._mailbox.get_nowait()
            if future is not None and not future.done():
                future.set_exception(error)
