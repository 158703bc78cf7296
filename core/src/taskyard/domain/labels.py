"""Label affinity: whether a worker's labels satisfy what a task asks, and how well."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from taskyard_sdk.models import Label, LabelValue

DesiredLabels = tuple[tuple[str, Label], ...]

_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def matches(worker_value: LabelValue | None, label: Label) -> bool:
    """The worker's value (left) compared with the wanted one (right). Ordering comparators need
    two numbers or two strings; a missing label never matches (not even `!=`)."""
    if worker_value is None:
        return False
    if label.comparator in ("=", "!="):
        equal = _same_kind(worker_value, label.value) and worker_value == label.value
        return equal if label.comparator == "=" else not equal
    if (_number(worker_value) and _number(label.value)) or (
        isinstance(worker_value, str) and isinstance(label.value, str)
    ):
        return _ORDERING[label.comparator](worker_value, label.value)
    return False


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_kind(left: object, right: object) -> bool:
    return isinstance(left, bool) == isinstance(right, bool)


def score(labels: Mapping[str, LabelValue], desired: DesiredLabels) -> int | None:
    """None when a required label is not satisfied; else the summed weights of the wanted labels
    the worker has (higher is a better match)."""
    total = 0
    for name, label in desired:
        if matches(labels.get(name), label):
            total += label.weight
        elif label.required:
            return None
    return total


def describe_required(desired: DesiredLabels) -> str:
    return ", ".join(
        f"{name} {label.comparator} {label.value!r}" for name, label in desired if label.required
    )
