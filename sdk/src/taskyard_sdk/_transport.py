"""HTTP to the engine: one aiohttp session per event loop, errors turned into SDK exceptions, and
a private event loop thread so the synchronous API works anywhere (even inside a running loop)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import aiohttp
from pydantic_core import from_json, to_json

from taskyard_sdk._channel import CallTooLarge, Channel, ChannelLost, ChannelRefused
from taskyard_sdk._config import Config
from taskyard_sdk._errors import (
    ApiError,
    AuthenticationError,
    ConnectionLost,
    EngineUnreachable,
    Unavailable,
    api_error,
)

T = TypeVar("T")
OWNER_LOST = "owner_lost"  # 502: the node a call was forwarded to died with it in flight


class Transport:
    """Calls go over the client channel (one websocket per event loop, see `_channel`) when
    the engine serves one, else over HTTP; a call too large for a frame goes over HTTP.

    Requests that did not reach the engine (connection refused) or that it could not serve
    (503: its database is restarting) changed nothing, so they are retried with back-off for up
    to `retry_for` seconds before EngineUnreachable / the 503 is raised. A call in flight when
    the connection closes is retried too if it only reads or carries an idempotency key
    (`idempotent`); otherwise it raises ConnectionLost, since it may have been applied."""

    def __init__(self, config: Config, retry_for: float = 30.0, *, channel: bool = True) -> None:
        self.config = config
        self._current = 0  # which of the config's URLs calls go to (see fail_over)
        self.retry_for = retry_for
        self.use_channel = channel
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Channel] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def url(self) -> str:
        """The engine node calls go to now: the first of the URLs given, until it cannot be
        reached (any node of a cluster serves any call)."""
        return self.config.urls[self._current]

    def fail_over(self, unreachable: str) -> bool:
        """`unreachable` could not be reached: go on to the next URL (once per failure, however
        many calls saw it). Whether there is another to try."""
        urls = self.config.urls
        if len(urls) > 1 and self.url == unreachable:
            self._current = (self._current + 1) % len(urls)
        return len(urls) > 1

    @property
    def headers(self) -> dict[str, str]:
        if self.config.token is None:
            raise AuthenticationError(
                401,
                "unauthorized",
                "no token: pass token= to Taskyard(...), set TASKYARD_TOKEN or "
                "TASKYARD_TOKEN_FILE, or run a local engine from this directory (it writes "
                ".taskyard/token on its first start)",
            )
        return {"Authorization": f"Bearer {self.config.token}"}

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                connector=aiohttp.TCPConnector(limit=64),
            )
            self._sessions[loop] = session
            if loop not in self._closers:
                closer = self._closers[loop] = self._closes_with(loop)
                starting = loop.create_task(_start(closer))
                _starting.add(starting)
                starting.add_done_callback(_starting.discard)
        return session

    async def _closes_with(self, loop: asyncio.AbstractEventLoop) -> AsyncIterator[None]:
        """Waits at its `yield` for the loop's life. A loop that ends finalises its async
        generators (asyncio.run does, and so does the SDK's own loop at exit), which closes
        this loop's connections: no "Unclosed client session" at exit, whoever forgot."""
        try:
            yield
        finally:
            self._closers.pop(loop, None)
            await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """`json_body` is encoded here; `body` is JSON already encoded. `idempotent` (default:
        for GET; a trigger with an idempotency key is too) says the call may be sent again when
        the connection, or the engine node it was forwarded to, is lost with it in flight."""
        if json_body is not None:
            body = to_json(json_body)
        if idempotent is None:
            idempotent = method == "GET"
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            url = self.url
            try:
                if self.use_channel:
                    answer = await self._over_channel(method, path, body, params, idempotent)
                    if answer is not None:
                        return self._payload(*answer)
                return await self._request_once(method, path, body, params, idempotent)
            except EngineUnreachable:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if self.fail_over(url):  # another node serves the same call
                    await asyncio.sleep(min(0.05, remaining))
                    continue
            except ApiError as exc:
                # Unavailable (503) is retried; so is an idempotent call whose node lost the
                # owner it forwarded the call to (502 owner_lost).
                retried = isinstance(exc, Unavailable) or (idempotent and exc.code == OWNER_LOST)
                remaining = deadline - time.monotonic()
                if not retried or remaining <= 0:
                    raise
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)

    async def _request_once(
        self,
        method: str,
        path: str,
        data: bytes | None,
        params: Sequence[tuple[str, str]] | None,
        idempotent: bool,
    ) -> Any:
        headers = self.headers
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self.session().request(
                method, self.url + path, data=data, params=params, headers=headers
            ) as response:
                body = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise EngineUnreachable(
                f"cannot reach the Taskyard engine at {self.url}: {exc}. Is it running? "
                f"Start one with `taskyard engine`, or set TASKYARD_URL."
            ) from exc
        except aiohttp.ClientConnectionError as exc:  # lost with the call in flight
            if idempotent:
                raise EngineUnreachable(
                    f"lost the connection to the engine at {self.url}: {exc}"
                ) from exc
            raise ConnectionLost(
                f"the connection to the engine at {self.url} closed while {method} {path} "
                f"was in flight; it may or may not have been applied"
            ) from exc
        return self._payload(status, _decoded(body))

    @staticmethod
    def _payload(status: int, payload: Any) -> Any:
        if status >= 400:
            raise api_error(status, payload)
        return payload

    async def _over_channel(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Sequence[tuple[str, str]] | None,
        idempotent: bool,
    ) -> tuple[int, Any] | None:
        """The call's status and body over the channel; None when it must go over HTTP."""
        loop = asyncio.get_running_loop()
        channel = self._channels.get(loop)
        try:
            if channel is None or channel.closed:
                headers = self.headers  # no token: say so before opening anything
                channel = self._channels[loop] = await Channel.open(
                    self.session(), self.url, headers
                )
            return await channel.call(method, path, body, params)
        except ChannelRefused as refused:
            if refused.for_good:
                self.use_channel = False
            return None
        except CallTooLarge:
            return None
        except ChannelLost as exc:
            if idempotent:
                raise EngineUnreachable(
                    f"lost the connection to the engine at {self.url}: {exc}"
                ) from exc
            raise ConnectionLost(
                f"the connection to the engine at {self.url} closed while {method} "
                f"{path} was in flight; it may or may not have been applied"
            ) from exc

    async def events(self, path: str) -> AsyncIterator[Any]:
        """The `data:` payloads of a server-sent event stream, until its `end` event."""
        try:
            async with self.session().get(self.url + path, headers=self.headers) as response:
                if response.status >= 400:
                    raise api_error(response.status, _decoded(await response.read()))
                event = "message"
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        if event == "end":
                            return
                        yield json.loads(line.removeprefix("data: "))
                    elif not line:
                        event = "message"
        except aiohttp.ClientConnectorError as exc:
            raise EngineUnreachable(
                f"cannot reach the Taskyard engine at {self.url}: {exc}"
            ) from exc

    def close_soon(self) -> None:
        """Close this transport's connections on every loop that has some (each on its own
        loop, without waiting): it is being replaced."""
        for loop in {*self._sessions, *self._channels}:
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self.close(), loop)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        channel = self._channels.pop(loop, None)
        if channel is not None:
            await channel.close()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()


_starting: set[asyncio.Task[None]] = set()  # held until done: the loop keeps weak references


async def _start(generator: AsyncIterator[None]) -> None:
    """Run an async generator up to its first `yield` (from then on its loop finalises it)."""
    await anext(generator)


class _BackgroundLoop:
    """An event loop on a daemon thread, for the synchronous API."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        # In the caller's context: a sync task spawning children must be seen as their parent.
        context = contextvars.copy_context()
        return asyncio.run_coroutine_threadsafe(
            _in_context(coroutine, context), self._ensure()
        ).result()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="taskyard-sdk", daemon=True).start()
                self._loop = loop
                atexit.register(self._stop)
            return self._loop

    def _stop(self) -> None:
        if self._loop is not None:
            # Close what the blocking API opened (see Transport._closes_with), then stop.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(
                    self._loop.shutdown_asyncgens(), self._loop
                ).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)


async def _in_context(coroutine: Coroutine[Any, Any, T], context: contextvars.Context) -> T:
    return await asyncio.get_running_loop().create_task(coroutine, context=context)


background = _BackgroundLoop()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code."""
    return background.run(coroutine)


def _decoded(body: bytes) -> Any:
    """A response body as JSON, or as text when it is not JSON (a proxy's error page)."""
    try:
        return from_json(body) if body else None
    except ValueError:
        return body.decode(errors="replace")
