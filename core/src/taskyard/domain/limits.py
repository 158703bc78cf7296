"""Payload limits: the largest input, output, event payload and log line the engine keeps,
each measured as the JSON it is stored as.

An input or event payload over its limit is refused at the edge (413, naming the limit and
where the payload was); an output over its limit fails its attempt, for good, with an error
saying so (the same output would be too large on every retry); a log line over its limit is
kept cut, with a note of how much was cut (a log line never fails a task).
"""

from __future__ import annotations

from dataclasses import dataclass

from taskyard.errors import PayloadTooLarge
from taskyard_sdk.protocol import cut_line

_MAX_JSON_CHAR = 6  # `\u001f`: the longest a character of a string becomes in JSON
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit: its size in bytes, the setting that changes it, and what it bounds."""

    bytes: int
    setting: str
    bounds: str  # plural: "inputs", "outputs", ...

    def refusal(self, where: str, size: int) -> PayloadTooLarge:
        """The error for a payload over the limit (callers compare sizes themselves: naming
        `where` costs more than the comparison, and is needed only then)."""
        return PayloadTooLarge(self.problem(where, size))

    def may_exceed(self, text: str) -> bool:
        """Whether a string could be over the limit as JSON (its length bounds its size: a
        string within the limit by that bound need not be encoded to tell)."""
        return len(text) * _MAX_JSON_CHAR + 2 > self.bytes

    def problem(self, where: str, size: int) -> str:
        return (
            f"{where} is {size:,} bytes of JSON; the engine keeps {self.bounds} up to "
            f"{self.bytes:,} bytes ({self.setting}). Store large data elsewhere (object "
            f"storage, a database) and pass a reference."
        )


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    input: Limit
    output: Limit  # a task's result, a durable step's result, a stream chunk
    event: Limit
    log_line_bytes: int

    @classmethod
    def of(
        cls,
        *,
        input_bytes: int = MIB,
        output_bytes: int = MIB,
        event_bytes: int = MIB,
        log_line_bytes: int = 64 * 1024,
    ) -> PayloadLimits:
        return cls(
            Limit(input_bytes, "max_input_bytes", "inputs"),
            Limit(output_bytes, "max_output_bytes", "outputs"),
            Limit(event_bytes, "max_event_bytes", "event payloads"),
            log_line_bytes,
        )

    def cut_line(self, line: str) -> str:
        """The log line as kept: whole when within the limit, else its head and a note."""
        return cut_line(line, self.log_line_bytes)
