"""Checks on what users pass to the SDK's decorators and constructors, with errors naming it."""

from __future__ import annotations

from collections.abc import Sequence


def strings(value: str | Sequence[str], what: str) -> list[str]:
    """A list of strings, where one string alone is one item: `on_events="order:paid"` is
    `["order:paid"]`, never one item per character."""
    if isinstance(value, str):
        return [value]
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"{what} must be a string or a list of strings, not a list holding {item!r}"
            )
    return items
