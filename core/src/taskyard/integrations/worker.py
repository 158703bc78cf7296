"""The engine's integration worker, and the declarative workflows it runs.

For each tenant with declarative workflow files, the engine runs an SDK worker inside its own
process, connected to itself like any worker (on the `integrations` queue, with an in-memory
token). Its tasks are the plugins' integration actions (`http:request`, ...) and one task per
declarative step, which renders the step's `with` and calls the action (or, for an action no
plugin provides, runs the task of that name as a child run on the user's workers). So retries,
timeouts, concurrency and rate limits apply to integrations exactly as to user tasks.

Files are read from the workflows directory (`<data-dir>/workflows`, or `--workflows DIR`):
`*.yaml` / `*.yml` at its top belong to the `default` tenant, those in `<tenant name>/` to that
tenant. The directory is polled every second; a changed file is loaded again, and a file that
does not load is reported (file, line, reason) and leaves the last good version of its workflow
in place.

A change starts the tenant's new integration worker first and only then drains the old one, for
as long as its longest step may run: steps in flight finish where they started (of every
workflow, changed or not: runs in flight keep their version), and new steps go to the new
worker at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskyard.actors.base import SideTasks
from taskyard.errors import ApiError
from taskyard.integrations.declarative import (
    INTEGRATION_QUEUE,
    DeclarativeError,
    Declared,
    StepSpec,
    load,
)
from taskyard.integrations.declarative import render as render_with
from taskyard.plugin_manager import installed_plugins
from taskyard.plugins import Action
from taskyard_sdk import Context, Task, Taskyard, Worker
from taskyard_sdk.models import TaskOptions, WorkflowDefinition

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
SLOTS = 50


@dataclass
class FileState:
    stamp: float
    tenant: str
    declared: Declared | None = None  # the last version that loaded
    error: str | None = None  # why the file on disk does not load (if it does not)


Register = Callable[[str, WorkflowDefinition], Awaitable[None]]  # tenant name, definition
TokenFor = Callable[[str], Awaitable[str]]  # tenant name -> a worker token


class Integrations:
    def __init__(
        self,
        *,
        directory: Path,
        url: Callable[[], str],
        actions: dict[str, Action],
        register: Register,
        token_for: TokenFor,
        forget_token: Callable[[str], None],
        loaded_plugins: Collection[str] = (),
        poll_seconds: float = 1.0,
    ) -> None:
        self.directory = directory
        self.url = url
        self.actions = actions
        self.loaded_plugins = set(loaded_plugins)  # to name the one a step's action needs
        self.register = register
        self.token_for = token_for
        self.forget_token = forget_token
        self.poll_seconds = poll_seconds
        self.files: dict[Path, FileState] = {}
        self.workers: dict[str, tuple[Taskyard, Worker]] = {}
        self._retiring = SideTasks()  # replaced workers, draining
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.scan()
        self._poller = asyncio.create_task(self._poll(), name="declarative-workflows")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for tenant in list(self.workers):
            await self._stop_worker(tenant)
        await self._retiring.wait()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.scan()
            except Exception:
                log.exception("could not read the declarative workflows in %s", self.directory)

    # -- files -----------------------------------------------------------------------------------

    def _on_disk(self) -> dict[Path, str]:
        """Workflow files and the tenant each belongs to."""
        found: dict[Path, str] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.iterdir()):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                found[path] = DEFAULT_TENANT
            elif path.is_dir():
                for inner in sorted(path.iterdir()):
                    if inner.suffix in (".yaml", ".yml") and inner.is_file():
                        found[inner] = path.name
        return found

    async def scan(self) -> None:
        """Load what changed; register it; restart the workers of the tenants it touched."""
        on_disk = await asyncio.to_thread(self._on_disk)
        touched: set[str] = set()
        for path in [p for p in self.files if p not in on_disk]:  # deleted files
            gone = self.files.pop(path)
            touched.add(gone.tenant)
            if gone.declared is not None:
                await self._retire(gone.tenant, gone.declared)
        for path, tenant in on_disk.items():
            try:
                stamp = path.stat().st_mtime
            except FileNotFoundError:
                continue
            known = self.files.get(path)
            if known is not None and known.stamp == stamp:
                continue
            state = known if known is not None else FileState(stamp, tenant)
            self.files[path] = state
            state.stamp = stamp
            if await self._load(path, tenant, state):
                touched.add(tenant)
        for tenant in sorted(touched):
            await self._restart_worker(tenant)

    async def _retire(self, tenant: str, declared: Declared) -> None:
        """A deleted file's workflow stops being triggered: its next version has no events and
        no crons (runs in flight keep their version)."""
        quiet = declared.definition.model_copy(update={"on_events": [], "on_crons": []})
        try:
            await self.register(tenant, quiet)
        except Exception:
            log.exception(
                "could not retire workflow %r of the deleted file %s",
                declared.spec.name,
                declared.path,
            )

    async def _load(self, path: Path, tenant: str, state: FileState) -> bool:
        try:
            declared = load(
                path,
                await asyncio.to_thread(path.read_text),
                actions=self.actions.keys(),
                unloaded_plugins=installed_plugins().keys() - self.loaded_plugins,
            )
            for step in declared.steps():
                action = self.actions.get(step.action)
                check = getattr(action, "check", None)
                if check is not None and not any("{{" in str(v) for v in step.with_.values()):
                    check(step.with_)
            await self.register(tenant, declared.definition)
        except Exception as exc:  # a plugin's check may raise anything: report, go on
            if isinstance(exc, DeclarativeError):
                state.error = str(exc)
            elif isinstance(exc, ApiError):
                state.error = f"{path}: {exc.message}"
            elif isinstance(exc, ValueError):
                state.error = f"{path}: {exc}"
            else:
                state.error = f"{path}: {type(exc).__name__}: {exc}"
            log.error(
                "declarative workflow %s not loaded (the last good version stays): %s",
                path,
                state.error,
            )
            return False
        state.declared, state.error = declared, None
        log.info("declarative workflow %r loaded from %s", declared.spec.name, path)
        return True

    def status(self, tenant: str) -> list[dict[str, Any]]:
        return [
            {
                "file": str(path),
                "workflow": state.declared.spec.name if state.declared else None,
                "error": state.error,
            }
            for path, state in sorted(self.files.items())
            if state.tenant == tenant
        ]

    # -- the workers -----------------------------------------------------------------------------

    async def _restart_worker(self, tenant: str) -> None:
        """The tenant's worker for what its files declare now; the one it replaces drains in
        the background."""
        declared = [
            state.declared
            for state in self.files.values()
            if state.tenant == tenant and state.declared is not None
        ]
        if not declared:
            await self._stop_worker(tenant)
            return
        token = await self.token_for(tenant)
        client = Taskyard(self.url(), token)
        tasks: list[Task[Any, Any]] = [
            _action_task(client, action) for action in self.actions.values()
        ]
        for workflow in declared:
            for step in workflow.steps():
                tasks.append(
                    _step_task(
                        client,
                        workflow.spec.name,
                        step,
                        self.actions.get(step.action),
                        workflow.definition,
                    )
                )
        longest = max(task.options.execution_timeout for task in tasks)
        worker = client.worker(
            "integrations",
            tasks=tasks,
            slots=SLOTS,
            queue=INTEGRATION_QUEUE,
            drain_timeout=longest + 5,
        )
        try:
            await worker.__aenter__()
        except Exception:
            log.exception("the integration worker of tenant %r did not start", tenant)
            self.forget_token(token)
            await client.aio_close()
            return
        replaced = self.workers.get(tenant)
        self.workers[tenant] = (client, worker)
        if replaced is not None:
            self._retiring.spawn(
                self._retire_worker(*replaced), name=f"integrations:{tenant}:drain"
            )

    async def _stop_worker(self, tenant: str) -> None:
        running = self.workers.pop(tenant, None)
        if running is not None:
            await self._retire_worker(*running)

    async def _retire_worker(self, client: Taskyard, worker: Worker) -> None:
        """Drain: the steps it runs finish (within their timeouts), it takes nothing new."""
        try:
            await worker.__aexit__(None, None, None)
        finally:
            await client.aio_close()
            if client.config.token is not None:
                self.forget_token(client.config.token)


def _action_task(client: Taskyard, action: Action) -> Task[Any, Any]:
    """A plugin action as a task of its own (`http:request`), for triggering it directly."""

    async def run(params: dict[str, Any]) -> Any:
        return await action.run(params)

    return Task(client, run, action.name, TaskOptions(queue=INTEGRATION_QUEUE))


def _step_task(
    client: Taskyard,
    workflow: str,
    step: StepSpec,
    action: Action | None,
    definition: WorkflowDefinition,
) -> Task[Any, Any]:
    """A declarative step: render its `with`, then call the action (or run the task it names
    as a child run, on the workers that have it)."""
    options = next(s.options for s in definition.steps if s.name == step.id)
    delegate: Task[Any, Any] | None = (
        Task(client, _never, step.action, TaskOptions()) if action is None else None
    )

    async def run(input: Any, ctx: Context) -> Any:
        params = render_with(step.with_, {"input": input, "steps": ctx.parent_outputs})
        if action is not None:
            return await action.run(params)
        assert delegate is not None
        return await delegate.aio_run(params)

    return Task(client, run, f"{workflow}:{step.id}", options)


async def _never(params: Any) -> Any:  # the delegate's function runs on a user's worker
    raise RuntimeError("a delegated action runs on the worker that registered it")
