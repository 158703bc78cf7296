"""What the SDK makes of answers that are not the engine's: a proxy's HTML error page, or an empty
body, on a plain request and on a stream. Served by a local HTTP server standing where the engine
would."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from taskyard_sdk import ApiError, RunHandle, Taskyard

PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture
async def proxy() -> AsyncIterator[str]:
    """Answers every request with a gateway's error: an HTML page, or nothing at all under
    /empty."""

    async def answer(request: web.Request) -> web.Response:
        if request.path.startswith("/empty/"):
            return web.Response(status=502)
        return web.Response(status=502, text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_proxy_page_on_a_stream_is_an_api_error_quoting_it(proxy: str) -> None:
    ty = Taskyard(url=proxy, token="t")

    @ty.task(name="chat")
    async def chat(_: None) -> None: ...

    handle = RunHandle(chat, uuid.uuid4())
    with pytest.raises(ApiError, match="502 Bad Gateway") as raised:
        async for _ in handle.aio_stream():
            pass
    assert raised.value.status == 502
    await ty.aio_close()


async def test_an_empty_error_answer_says_so(proxy: str) -> None:
    ty = Taskyard(url=proxy + "/empty", token="t")
    with pytest.raises(ApiError, match="an empty answer") as raised:
        await ty.runs.aio_get(uuid.uuid4())
    assert raised.value.status == 502
    await ty.aio_close()
