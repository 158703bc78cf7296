"""Loading plugins from entry points and calling their hooks, each in isolation."""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from taskyard import plugins as hookspecs

log = logging.getLogger(__name__)


class UnknownPluginError(RuntimeError):
    """A plugin was asked for that is not installed."""


def installed_plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP)}


class Plugins:
    """The engine's plugin manager. Hooks are called one implementation at a time, so one plugin
    that raises is logged and counted (`errors`) without keeping the others from running."""

    def __init__(self, names: Iterable[str] = (), extra: Iterable[object] = ()) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.errors: Counter[str] = Counter()
        available = installed_plugins()
        for name in dict.fromkeys(names):
            if name not in available:
                installed = ", ".join(sorted(available)) or "none"
                raise UnknownPluginError(
                    f"unknown plugin {name!r}; installed plugins: {installed}. Install the "
                    f"package that provides it (entry point group "
                    f"'{hookspecs.ENTRY_POINT_GROUP}')."
                )
            self.manager.register(available[name].load(), name=name)
        for plugin in extra:
            self.manager.register(plugin)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.manager.list_name_plugin()]

    def implemented(self, hook: str) -> bool:
        """Whether any loaded plugin implements `hook`."""
        return bool(getattr(self.manager.hook, hook).get_hookimpls())

    async def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of `hook`, awaiting coroutines; failures are isolated."""
        results = []
        for impl in getattr(self.manager.hook, hook).get_hookimpls():
            try:
                result = impl.function(**{name: kwargs[name] for name in impl.argnames})
                if inspect.isawaitable(result):
                    result = await result
            except Exception:
                self.errors[impl.plugin_name] += 1
                log.exception("plugin %r failed in hook %s", impl.plugin_name, hook)
                continue
            if result is not None:
                results.append(result)
        return results
