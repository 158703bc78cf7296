"""Who should own what in a cluster, and for how long a node may act on the leases it holds.

Tenants are spread over the live nodes by rendezvous hashing: each tenant goes to the node with
the highest hash of (tenant, node name). When a node joins, only the tenants it now wins move to it;
when one leaves, only its own tenants move, each to its runner-up. Every node computes the same
answer from the same list of live nodes, with nothing to agree on. Names, not registrations: a
node restarted under its name gets back the tenants it had.

A node's leases are its own until they expire in Postgres. It counts their term from the moment
it *sent* the renewal that succeeded, on its monotonic clock (which runs on while the process is
frozen), so it stops assigning work before Postgres would let another node take a lease over:
an owner that was paused finds its term over when it wakes, and assigns nothing until it has
renewed, or learned that its leases have moved on.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field


def _weight(key: uuid.UUID, node: str) -> bytes:
    return hashlib.blake2b(key.bytes + node.encode(), digest_size=8).digest()


def owner_among(key: uuid.UUID, nodes: Iterable[str]) -> str | None:
    """The node (by name) `key` belongs to among `nodes` (rendezvous hashing); None when there
    are none."""
    return max(nodes, key=lambda node: _weight(key, node), default=None)


@dataclass(slots=True)
class LeaseTerm:
    """Until when (monotonic seconds) this node's leases are surely its own."""

    until: float = 0.0

    def current(self) -> bool:
        return time.monotonic() < self.until

    def renewed(self, sent_at: float, seconds: float) -> None:
        """A renewal sent at `sent_at` (monotonic) succeeded for leases of `seconds`. A margin
        of a tenth of the term covers the clocks of this node and Postgres running apart."""
        self.until = sent_at + seconds * 0.9


@dataclass(slots=True)
class TenantLease:
    """One tenant held by this node: the epoch its writes are fenced with, and the term they
    share with the node's other leases. `released` once given up: its actors assign nothing."""

    tenant_id: uuid.UUID
    epoch: int
    term: LeaseTerm = field(default_factory=LeaseTerm)
    released: bool = False

    def valid(self) -> bool:
        return not self.released and self.term.current()
