"""What a workflow step can wait for (`wait_for=[...]`): a sleep, an event, or combinations.

@wf.task(parents=[signup], wait_for=[Or(Sleep("1h"), Event("user:verified",
                                                           filter="payload.id == input.id"))])
"""

from __future__ import annotations

from typing import Any

from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk.models import AllOf, AnyOf, Condition, EventCondition, SleepCondition


class Sleep(SleepCondition):
    """Holds once `duration` has passed since the step began waiting (durably: an engine
    restart does not start the clock again)."""

    def __init__(self, duration: Duration, **data: Any) -> None:
        super().__init__(seconds=parse_duration(duration, name="Sleep"), **data)


class Event(EventCondition):
    """Holds once an event with this key (or, for "prefix:*", a key with that prefix) has been
    pushed since the workflow run started and `filter` (CEL over `payload`, `metadata` and
    the run's `input`) holds for it."""

    def __init__(self, key: str, filter: str | None = None, **data: Any) -> None:
        super().__init__(key=key, filter=filter, **data)


class Or(AnyOf):
    """Holds once any of its conditions holds."""

    def __init__(self, *conditions: Condition, **data: Any) -> None:
        super().__init__(conditions=list(conditions), **data)


class And(AllOf):
    """Holds once all of its conditions hold."""

    def __init__(self, *conditions: Condition, **data: Any) -> None:
        super().__init__(conditions=list(conditions), **data)
