"""What a worker opens once and its tasks use: the lifespan's state, handed to task functions
by type or by `Depends`.

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            yield {"http": http, "settings": Settings()}   # closed when the worker has drained

    @ty.task()
    async def fetch(url: str, http: aiohttp.ClientSession) -> int: ...           # by type
    async def status(url: str, ctx: Context,
                     s: Annotated[Settings, Depends("settings")]) -> str: ...    # by name
    async def token(n: int, t: Annotated[str, Depends(lambda state: state["settings"].token)]): ...

    ty.worker("w", tasks=[fetch], lifespan=lifespan)
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskyard_sdk._context import Context


@dataclass(frozen=True)
class Depends:
    """A task parameter filled from the worker's lifespan state: by the name of an entry (a
    dict key or an attribute), or by a function of the state."""

    source: str | Callable[[Any], Any]


@dataclass(frozen=True)
class Dependency:
    """One parameter of a task function that the worker fills."""

    parameter: str
    wanted: Any  # the annotation: a type to find by
    depends: Depends | None

    def resolve(self, state: Any, task: str) -> Any:
        if self.depends is not None:
            source = self.depends.source
            if callable(source):
                return source(state)
            found = _entries(state)
            if source not in found:
                raise LookupError(
                    f"task {task!r}: parameter {self.parameter!r} depends on "
                    f"{source!r}, which the worker's lifespan does not provide "
                    f"(it provides {', '.join(map(repr, found)) or 'nothing'})"
                )
            return found[source]
        kind = typing.get_origin(self.wanted) or self.wanted
        matches = [
            value
            for value in _entries(state).values()
            if isinstance(kind, type) and isinstance(value, kind)
        ]
        if len(matches) != 1:
            how = "nothing" if not matches else f"{len(matches)} values"
            raise LookupError(
                f"task {task!r}: parameter {self.parameter!r} wants a "
                f"{getattr(kind, '__name__', kind)}, and the worker's lifespan "
                f"provides {how} of that type; name one with "
                f"Annotated[..., Depends('name')]"
            )
        return matches[0]


def _entries(state: Any) -> dict[str, Any]:
    if state is None:
        return {}
    if isinstance(state, dict):
        return {str(key): value for key, value in state.items()}
    return {name: getattr(state, name) for name in dir(state) if not name.startswith("_")}


def task_parameters(fn: Callable[..., Any], task: str) -> tuple[str, bool, list[Dependency]]:
    """The input parameter's name, whether the function takes the context, and the parameters
    its worker fills: after the input, the context is the parameter annotated Context (or the
    second one, unannotated), and every other one is a dependency."""
    parameters = list(inspect.signature(fn).parameters.values())
    if not parameters:
        raise TypeError(f"task {task!r}: a task function takes its input first")
    hints = typing.get_type_hints(fn, include_extras=True)
    takes_context = False
    dependencies = []
    for position, parameter in enumerate(parameters[1:], start=1):
        annotation = hints.get(parameter.name, inspect.Parameter.empty)
        depends = next(
            (
                extra
                for extra in getattr(annotation, "__metadata__", ())
                if isinstance(extra, Depends)
            ),
            None,
        )
        plain = typing.get_args(annotation)[0] if depends is not None else annotation
        if depends is None and (
            (isinstance(plain, type) and issubclass(plain, Context))
            or (position == 1 and plain is inspect.Parameter.empty)
        ):
            if takes_context:
                raise TypeError(f"task {task!r}: only one parameter can be the context")
            takes_context = True
        elif depends is None and plain is inspect.Parameter.empty:
            raise TypeError(
                f"task {task!r}: parameter {parameter.name!r} needs a type or "
                f"Depends(...) so that the worker can fill it"
            )
        else:
            dependencies.append(Dependency(parameter.name, plain, depends))
    return parameters[0].name, takes_context, dependencies
