"""Time-ordered identifiers (UUIDv7, RFC 9562), for the ids the SDK chooses itself (a run
enqueued through an outbox) and the engine's own: new rows land at the end of btree indexes, and
sorting ids sorts by creation time. Ids from one process are strictly increasing, even within a
millisecond (RFC 9562 method 2: the random part is incremented)."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = 0
# Random bytes from the OS, not Python's Mersenne Twister, whose next outputs follow from a few
# hundred seen: applications choose run ids too (an outbox's), and must not predict others'.
# Read 4 KiB at a time: a read per id would cost a system call each.
_entropy = bytearray()


def _forget_entropy() -> None:
    """A forked child must not draw the same bytes as its parent."""
    global _entropy
    _entropy = bytearray()


os.register_at_fork(after_in_child=_forget_entropy)


def uuid7_bytes() -> bytes:
    """The 16 bytes of a new UUIDv7."""
    global _last, _entropy
    millis = time.time_ns() // 1_000_000
    with _lock:
        if len(_entropy) < 10:
            _entropy = bytearray(os.urandom(4096))
        rand = int.from_bytes(_entropy[-10:]) >> 6  # 74 bits
        del _entropy[-10:]
        # 48-bit time, then 74 bits (12 + 62) that are random or, within a millisecond, counted.
        value = ((millis & 0xFFFF_FFFF_FFFF) << 74) | rand
        if value <= _last:
            value = _last + 1
        _last = value
    time_and_a = value >> 62  # 48-bit time + 12 bits
    b = value & 0x3FFF_FFFF_FFFF_FFFF  # 62 bits
    high = ((time_and_a >> 12) << 16) | (0x7 << 12) | (time_and_a & 0xFFF)
    return ((high << 64) | (0b10 << 62) | b).to_bytes(16, "big")


def new_run_id() -> uuid.UUID:
    return uuid.UUID(bytes=uuid7_bytes())
