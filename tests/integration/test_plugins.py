"""Plugins are found through entry points, selected by name, and isolated when they fail."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from taskyard.config import EngineSettings
from taskyard.engine import Engine
from taskyard.plugin_manager import Plugins, UnknownPluginError, installed_plugins
from taskyard.plugins import PluginHost, hookimpl


def test_the_sample_plugin_is_discovered_through_its_entry_point() -> None:
    assert installed_plugins()["hello"].value == "taskyard_hello"


def test_unknown_plugin_names_the_installed_ones() -> None:
    with pytest.raises(
        UnknownPluginError, match=r"unknown plugin 'nope'; installed plugins: .*hello"
    ):
        Plugins(["nope"])


async def test_selected_plugin_adds_routes_and_sees_startup(db_url: str, tmp_path: Path) -> None:
    import taskyard_hello

    settings = EngineSettings(
        database_url=db_url, port=0, data_dir=tmp_path, migrate=False, plugins=["hello"]
    )
    async with Engine(settings) as engine, aiohttp.ClientSession(base_url=engine.url) as http:
        assert engine.url in taskyard_hello.started
        headers = {"Authorization": f"Bearer {(tmp_path / 'token').read_text().strip()}"}
        async with http.get("/api/v1/hello", headers=headers) as response:
            assert response.status == 200
            assert await response.json() == {"hello": "default", "role": "admin"}
        async with http.get("/api/v1/hello") as response:
            assert response.status == 401, "plugin endpoints are authenticated like ours"
        async with http.get("/api/v1/openapi.json") as response:
            assert "/api/v1/hello" in (await response.json())["paths"]


async def test_plugins_not_selected_are_not_loaded(engine: Engine) -> None:
    async with (
        aiohttp.ClientSession(base_url=engine.url) as http,
        http.get("/api/v1/hello") as response,
    ):
        assert response.status == 404


class Faulty:
    """Every hook raises."""

    @hookimpl
    async def taskyard_startup(self, host: PluginHost) -> None:
        raise RuntimeError("startup broke")

    @hookimpl
    def taskyard_shutdown(self, host: PluginHost) -> None:
        raise RuntimeError("shutdown broke")


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def taskyard_startup(self, host: PluginHost) -> None:
        self.events.append("startup")

    @hookimpl
    async def taskyard_shutdown(self, host: PluginHost) -> None:
        self.events.append("shutdown")


async def test_a_failing_plugin_is_isolated(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    settings = EngineSettings(database_url=db_url, port=0, data_dir=tmp_path, migrate=False)
    engine = Engine(settings, plugins=[Faulty(), recorder])
    async with engine, aiohttp.ClientSession(base_url=engine.url) as http:
        async with http.get("/healthz") as response:
            assert response.status == 200
        assert sum(engine.plugins.errors.values()) == 1
        plugins = engine.plugins
    assert recorder.events == ["startup", "shutdown"]
    assert sum(plugins.errors.values()) == 2
    assert "startup broke" in caplog.text


def test_every_hook_is_documented() -> None:
    from pathlib import Path

    from taskyard import plugins

    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(plugins) if name.startswith("taskyard_")]
    assert hooks
    for hook in hooks:
        assert f"### {hook}" in docs, f"docs/plugins.md lacks a section for {hook}"
