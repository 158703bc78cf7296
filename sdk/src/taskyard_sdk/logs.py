"""Log lines that say which run they are about, as text or as JSON (one object a line).

A worker sets the run it is executing (run id, task, attempt, tenant) in a context variable for
the attempt's own asyncio task (and for the thread of a sync task), so every line logged while
it runs carries them: the worker's own lines and the application's, through any logger. The
engine passes them as `extra=run_fields(...)` on its lines about a run.

```python
import logging
from taskyard_sdk.logs import configure_logging

configure_logging("info", "json")
logging.getLogger("shop").info("charged")  # {"at": ..., "run_id": ..., "task": ...} in a task
```
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
FIELDS = ("tenant", "run_id", "task", "attempt")

current_run_fields: ContextVar[dict[str, Any] | None] = ContextVar("taskyard_log_run", default=None)


def run_fields(
    run_id: uuid.UUID | str,
    *,
    task: str | None = None,
    attempt: int | None = None,
    tenant: uuid.UUID | str | None = None,
) -> dict[str, Any]:
    """The fields of a line about a run, for `extra=` (those not known are left out)."""
    given = {"run_id": str(run_id), "task": task, "attempt": attempt}
    given["tenant"] = None if tenant is None else str(tenant)
    return {key: value for key, value in given.items() if value is not None}


class RunFields(logging.Filter):
    """Gives each record the fields of the run being executed where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_run_fields.get()
        if current:
            for key, value in current.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: at, level, logger, message, the run's fields, a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextLines(logging.Formatter):
    """The usual text line, with `[run <id> <task>#<attempt>]` when it is about a run."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        run_id = getattr(record, "run_id", None)
        if run_id is None or run_id in record.getMessage():
            return text  # the message names the run already
        task, attempt = getattr(record, "task", None), getattr(record, "attempt", None)
        about = f"run {run_id}" + (f" {task}" if task else "") + (f"#{attempt}" if attempt else "")
        return f"{text} [{about}]"


def configure_logging(level: str = "info", log_format: LogFormat = "text") -> None:
    """Log to stderr at `level`, as text or JSON lines, each with its run's fields. Replaces
    the root logger's handlers (for a process's entry point: the engine, a worker)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
    handler.addFilter(RunFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
