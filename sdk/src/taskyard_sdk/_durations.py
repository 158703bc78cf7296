"""Durations as users write them: seconds, `timedelta`, or strings like "30s", "5m", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")

Duration = float | int | str | timedelta


def parse_duration(value: Duration, *, name: str = "duration") -> float:
    """Seconds in `value`; raises ValueError naming `name` when it is not a duration."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"{name}: expected a duration, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{name}: {value!r} is not a duration; use seconds or a string like "
                    f"'500ms', '30s', '5m', '1h30m', '2d'"
                ) from None
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ValueError(f"{name}: expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise ValueError(f"{name}: {value!r} is negative")
    return seconds
