"""The cluster: engine nodes on one database sharing the tenants, each owned by one node at a time
through a lease in Postgres (store/leases.py), spread by rendezvous hashing (domain/leases.py).

Every `renew_every` seconds, and at once when another node says something changed (a NOTIFY:
a lease handed back, a node joining or leaving, a tenant created), a node:
1. beats, and reads which nodes are live;
2. renews every lease it holds; a lease it no longer holds was taken over (it had expired while
   this node was frozen or cut off): its tenant is dropped here at once, with no write, since
   the fence refuses any;
3. takes the leases of the tenants it should own that are free or expired, and recovers each
   tenant as after a restart (its queues, workflow runs, schedules) beside the ticks: a node
   taking over many tenants goes on renewing what it holds while it recovers them, and a call
   for a tenant waits for its recovery;
4. hands back the tenants another live node should own (a node joined): stops assigning, stops
   their actors, writes what they decided, then frees each lease, and says so, so the new owner
   takes them within milliseconds.

A node that stops (SIGTERM) first says it is stopping, then hands every tenant back the same way.
A node that dies holds its leases until they expire (`lease_seconds`); the survivors then take
them over, and its tenants are recovered exactly as after a restart.

One owner per piece of state: the leases this node holds are this object's (`leases`, and
`epochs`, which the persister's fence reads); the actors of a tenant are the directory's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from taskyard.actors.base import SideTasks
from taskyard.domain.leases import LeaseTerm, TenantLease, owner_among
from taskyard.services.directory import ActorDirectory
from taskyard.store.db import TRANSIENT_ERRORS, connect
from taskyard.store.leases import CHANNEL, LeaseRepository, Node, Owner
from taskyard.store.persister import Persister

log = logging.getLogger(__name__)

TenantHook = Callable[[uuid.UUID], Awaitable[None]]
SWEEPER = "sweep-nodes"  # the singleton that deletes long-dead nodes' rows
_SWEEP_EVERY = 600.0  # seconds
_RECOVERING_AT_ONCE = 4  # tenants recovered side by side (each reads its unfinished runs)
_RECOVERY_WAIT = 10.0  # seconds a call waits for its tenant's recovery on this node


@dataclass(frozen=True, slots=True)
class ClusterSample:
    """This node's view of its cluster, for /metrics."""

    nodes: int  # live nodes, this one included
    leases: int  # tenants this node owns
    takeovers: int
    handovers: int
    lost: int


class Cluster:
    def __init__(
        self,
        *,
        repository: LeaseRepository,
        directory: ActorDirectory,
        persister: Persister,
        database_url: str,
        name: str,
        url: Callable[[], str],
        lease_seconds: float,
        renew_every: float,
        adopted: TenantHook | None = None,
        releasing: TenantHook | None = None,
    ) -> None:
        self.repository = repository
        self.directory = directory
        self.persister = persister
        self.database_url = database_url
        self.node_id = repository.node_id
        self.name = name
        self.url = url
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.adopted = adopted  # per-tenant work beside the actors (an outbox drainer)
        self.releasing = releasing
        self.term = LeaseTerm()
        self.leases: dict[uuid.UUID, TenantLease] = {}  # taken and recovered: served here
        self.recovering: dict[uuid.UUID, asyncio.Task[None]] = {}  # taken, being recovered
        self._recoveries = asyncio.Semaphore(_RECOVERING_AT_ONCE)
        self._recoveries_running = SideTasks()  # apart from `_tasks`: a stop lets them finish
        self.epochs: dict[uuid.UUID, int] = {}  # read by the persister's fence at each batch
        self.nodes: list[Node] = []  # the live nodes, as of the last tick
        self.takeovers = 0  # leases taken over from a node that had not handed them back
        self.handovers = 0
        self.lost = 0  # leases found taken over by another node while this one held them
        self.stopping = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # set after each tick: routing waits on it
        self._ticking = asyncio.Lock()
        self._tasks = SideTasks()
        self._listener: asyncpg.Connection | None = None
        self._swept_at = 0.0
        persister.leases_moved = self._leases_moved
        persister.fence(self.epochs)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join, and take (and recover) this node's share of the tenants before serving."""
        await self.repository.join(self.name, self.url())
        await self._listen()
        await self.tick()
        self._tasks.spawn(self._run(), name="cluster")  # renewing while the tenants recover
        await asyncio.gather(*self.recovering.values())

    async def stop(self) -> None:
        """Leave: the others stop counting this node, then every tenant is handed back."""
        if self.stopping:
            return
        self.stopping = True
        await self._tasks.cancel()
        await asyncio.gather(*self.recovering.values(), return_exceptions=True)
        try:
            await self.repository.stopping()
            async with self._ticking:
                await self._hand_back(list(self.leases))
            await self.repository.drop_singletons()
            await self.repository.notify()
        except TRANSIENT_ERRORS as exc:  # the leases expire on their own
            log.warning("could not hand the leases back (%s); they will expire", exc)
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await listener.close()

    def sample(self) -> ClusterSample:
        return ClusterSample(
            len({node.name for node in self.nodes} | {self.name}),
            len(self.leases),
            self.takeovers,
            self.handovers,
            self.lost,
        )

    # -- what routing asks -----------------------------------------------------------------------

    def lease_of(self, tenant_id: uuid.UUID) -> TenantLease | None:
        """This node's lease of the tenant, while it may act on it."""
        lease = self.leases.get(tenant_id)
        return lease if lease is not None and lease.valid() else None

    async def owner(self, tenant_id: uuid.UUID, *, wait: float) -> Owner | None:
        """Where the tenant is owned, when not here: the live owner named by its lease, waiting
        up to `wait` seconds for one (a lease in the middle of moving); a tenant taken here and
        being recovered, up to `_RECOVERY_WAIT` for its recovery. None: it is owned here now, or
        no node took it in time (`lease_of` tells which)."""
        deadline = time.monotonic() + wait
        while True:
            if self.lease_of(tenant_id) is not None:
                return None
            recovery = self.recovering.get(tenant_id)
            if recovery is not None:
                # Taken here: served once recovered, also a call forwarded here (`wait` 0).
                await asyncio.wait({recovery}, timeout=_RECOVERY_WAIT)
                return None
            found = await self.repository.owner(tenant_id)
            if found is not None and not found.expired and found.node_id != self.node_id:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._wake.set()  # perhaps this node should take it: look now
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    # -- the tick --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.renew_every)
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres away: the term runs out, nothing is assigned
                log.warning("cluster: could not renew the leases (%s)", exc)
                await self._listen_again()

    async def tick(self) -> None:
        async with self._ticking:
            if self.stopping:
                return
            sent = time.monotonic()
            self.nodes = await self.repository.beat()
            held = await self.repository.renew()
            self.term.renewed(sent, self.lease_seconds)
            for tenant_id, epoch in list(self.epochs.items()):
                if held.get(tenant_id) != epoch:
                    log.warning(
                        "cluster: tenant %s was taken over by another node; dropping it here",
                        tenant_id,
                    )
                    await self._drop(tenant_id)
            live = {node.name for node in self.nodes} | {self.name}
            leaving, taking = [], []
            for tenant_id, orphaned in await self.repository.tenants():
                should = owner_among(tenant_id, live) == self.name
                if tenant_id in self.leases:
                    if not should:
                        leaving.append(tenant_id)
                elif tenant_id not in self.epochs and (should or orphaned):
                    taking.append(tenant_id)
            await self._hand_back(leaving)
            await self._take(taking)
            await self._sweep()
        self._changed.set()

    async def _take(self, tenant_ids: list[uuid.UUID]) -> None:
        """Take the leases that are free; each tenant is recovered beside the ticks."""
        taken = []
        for tenant_id in tenant_ids:
            took = await self.repository.take(tenant_id, self.name)
            if took is not None:
                taken.append((tenant_id, *took))
        if not taken:
            return
        # Rows an earlier term of ours left in the buffer are refused before the new epochs are
        # known: only the actors recovered now decide for these tenants.
        await self.persister.flush()
        for tenant_id, epoch, clean in taken:
            if not clean:
                self.takeovers += 1
            self.epochs[tenant_id] = epoch
            lease = TenantLease(tenant_id, epoch, self.term)
            self.recovering[tenant_id] = self._recoveries_running.spawn(
                self._recover(lease, clean), name=f"recover {tenant_id}"
            )

    async def _recover(self, lease: TenantLease, clean: bool) -> None:
        tenant_id = lease.tenant_id
        try:
            async with self._recoveries:
                await self.directory.adopt(tenant_id, lease, recovering=not clean)
                if self.adopted is not None:
                    await self.adopted(tenant_id)
        except Exception as exc:  # Postgres away: free it, a node takes it up again
            log.warning(
                "cluster: could not recover tenant %s (%s); handing it back", tenant_id, exc
            )
            lease.released = True
            self.epochs.pop(tenant_id, None)
            await self._stop_actors(tenant_id)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self.repository.hand_back(tenant_id, lease.epoch)
            return
        finally:
            self.recovering.pop(tenant_id, None)
        self.leases[tenant_id] = lease
        self._changed.set()
        log.info("cluster: node %s owns tenant %s (epoch %d)", self.name, tenant_id, lease.epoch)

    async def _hand_back(self, tenant_ids: list[uuid.UUID]) -> None:
        """Stop, write what was decided, then free the leases for the next owners: each tenant
        on its own, side by side, so one slow to stop holds up no other."""
        if not tenant_ids:
            return
        leases = [self.leases[tenant_id] for tenant_id in tenant_ids]
        for lease in leases:
            lease.released = True  # nothing more is assigned
        await asyncio.gather(*(self._give_back(lease) for lease in leases))
        await self.repository.notify()
        self.handovers += len(leases)
        log.info("cluster: node %s handed %d tenants back", self.name, len(leases))

    async def _give_back(self, lease: TenantLease) -> None:
        await self._stop_actors(lease.tenant_id)
        await self.persister.flush()
        del self.leases[lease.tenant_id]
        self.epochs.pop(lease.tenant_id, None)
        await self.repository.hand_back(lease.tenant_id, lease.epoch)

    async def _stop_actors(self, tenant_id: uuid.UUID) -> None:
        if self.releasing is not None:
            await self.releasing(tenant_id)
        await self.directory.release(tenant_id)

    async def _drop(self, tenant_id: uuid.UUID) -> None:
        """The lease moved on without us: stop here; what was not written is the new
        owner's to recover (the fence refuses it)."""
        self.lost += 1
        self.epochs.pop(tenant_id, None)
        recovery = self.recovering.pop(tenant_id, None)
        if recovery is not None:
            recovery.cancel()
            await asyncio.gather(recovery, return_exceptions=True)
        lease = self.leases.pop(tenant_id, None)
        if lease is not None:
            lease.released = True
        await self._stop_actors(tenant_id)

    def _leases_moved(self, tenants: set[uuid.UUID]) -> None:
        """The fence refused writes for `tenants`: stop assigning for them now; the next
        tick (at once) drops them."""
        for tenant_id in tenants:
            lease = self.leases.get(tenant_id)
            if lease is not None:
                lease.released = True
        self._wake.set()

    async def _sweep(self) -> None:
        """Under the singleton lease: delete the rows of nodes dead for a day."""
        if time.monotonic() - self._swept_at < _SWEEP_EVERY:
            return
        if await self.repository.hold_singleton(SWEEPER):
            self._swept_at = time.monotonic()
            swept = await self.repository.sweep_nodes()
            if swept:
                log.info("cluster: removed the rows of %d nodes silent for a day", swept)

    # -- notifications ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        try:
            self._listener = await connect(self.database_url)
            await self._listener.add_listener(CHANNEL, self._notified)
        except TRANSIENT_ERRORS as exc:
            self._listener = None
            log.warning("cluster: cannot listen for lease changes (%s); polling", exc)

    async def _listen_again(self) -> None:
        if self._listener is None or self._listener.is_closed():
            await self._listen()

    def _notified(self, *args: object) -> None:
        if args and args[-1] != str(self.node_id):
            self._wake.set()
