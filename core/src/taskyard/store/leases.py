"""Nodes and leases in Postgres (migrations/0012_cluster.sql): a node's heartbeat, the tenants'
leases and the cluster's singleton leases, taken, renewed and handed back. The decisions (which
node should own what, what to do when a lease is lost) are services/cluster.py's.

Reads here span tenants on purpose: they are the cluster's own bookkeeping (see
docs/architecture.md, "Queries across tenants").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

CHANNEL = "taskyard_leases"  # notified when leases are handed back or nodes come and go


@dataclass(frozen=True, slots=True)
class Node:
    node_id: uuid.UUID
    name: str
    url: str | None


@dataclass(frozen=True, slots=True)
class Owner:
    node_id: uuid.UUID
    url: str | None
    expired: bool


class LeaseRepository:
    def __init__(
        self,
        pool: asyncpg.Pool,
        node_id: uuid.UUID,
        seconds: float,
        *,
        ticks: asyncpg.Pool | None = None,
    ) -> None:
        """`ticks`: connections of the cluster's ticks alone (beats, renewals, takes), which
        then never wait behind the engine's other queries or the owner lookups of routing."""
        self.pool = pool
        self.ticks = ticks or pool
        self.node_id = node_id
        self.seconds = seconds

    async def join(self, name: str, url: str) -> None:
        """This node's name and URL in its row (registered by the persister's `register_node`)."""
        await self.pool.execute(
            "UPDATE engine_nodes SET name = $2, url = $3, heartbeat_at = now() WHERE node_id = $1",
            self.node_id,
            name,
            url,
        )
        await self.notify()

    async def beat(self) -> list[Node]:
        """Beat, and the live nodes (beaten within a lease's term, not stopping): of nodes that
        share a name (a node restarted), the newest alone."""
        async with self.ticks.acquire() as conn:
            await conn.execute(
                "UPDATE engine_nodes SET heartbeat_at = now() WHERE node_id = $1", self.node_id
            )
            rows = await conn.fetch(
                "SELECT DISTINCT ON (name) node_id, name, url FROM engine_nodes "
                "WHERE heartbeat_at > now() - make_interval(secs => $1) AND NOT stopping "
                "AND name IS NOT NULL ORDER BY name, started_at DESC",
                self.seconds,
            )
        return [Node(row["node_id"], row["name"], row["url"]) for row in rows]

    async def renew(self) -> dict[uuid.UUID, int]:
        """Extend every lease this node holds; the tenants it still holds, with their epochs.
        The rows are locked in tenant order, as the write batches' fence locks them: in any
        other order a renewal and a batch can each hold a row the other waits for."""
        rows = await self.ticks.fetch(
            "UPDATE tenant_leases lease SET expires_at = now() + make_interval(secs => $2) "
            "FROM (SELECT tenant_id FROM tenant_leases WHERE node_id = $1 "
            "      ORDER BY tenant_id FOR UPDATE) mine "
            "WHERE lease.tenant_id = mine.tenant_id AND lease.node_id = $1 "
            "RETURNING lease.tenant_id, lease.epoch",
            self.node_id,
            self.seconds,
        )
        return {row["tenant_id"]: row["epoch"] for row in rows}

    async def tenants(self) -> list[tuple[uuid.UUID, bool]]:
        """Every tenant, and whether it is orphaned: unowned for a whole term (the node that
        should take it does not), so any node takes it."""
        rows = await self.ticks.fetch(
            "SELECT tenant.tenant_id, coalesce(lease.expires_at, tenant.created_at) "
            "< now() - make_interval(secs => $1) AS orphaned "
            "FROM tenants tenant LEFT JOIN tenant_leases lease USING (tenant_id)",
            self.seconds,
        )
        return [(row["tenant_id"], row["orphaned"]) for row in rows]

    async def take(self, tenant_id: uuid.UUID, name: str) -> tuple[int, bool] | None:
        """Take the tenant's lease if it is free, expired, or held by an earlier node of this
        node's name (this node restarted: that one is gone). The new epoch, and whether the
        last owner handed it back (it wrote everything it decided); None if not taken.

        The row is read locked first: a hand-back committing meanwhile is then seen, where the
        statement's own snapshot would still show the last owner holding it."""
        async with self.ticks.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                "SELECT node_id FROM tenant_leases WHERE tenant_id = $1 FOR UPDATE", tenant_id
            )
            epoch = await conn.fetchval(
                """
                INSERT INTO tenant_leases AS lease (tenant_id, node_id, epoch, expires_at)
                VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                ON CONFLICT (tenant_id) DO UPDATE
                SET node_id = $2, epoch = lease.epoch + 1, expires_at = excluded.expires_at
                WHERE lease.node_id IS NULL OR lease.expires_at < now()
                   OR lease.node_id IN (
                       SELECT node_id FROM engine_nodes
                       WHERE name = $4 AND node_id <> $2
                         AND started_at < (SELECT started_at FROM engine_nodes WHERE node_id = $2))
                RETURNING epoch
                """,
                tenant_id,
                self.node_id,
                self.seconds,
                name,
            )
        return None if epoch is None else (epoch, before is None)

    async def hand_back(self, tenant_id: uuid.UUID, epoch: int) -> None:
        """Give the lease up at once (it stays at its epoch: the next owner raises it)."""
        await self.ticks.execute(
            "UPDATE tenant_leases SET node_id = NULL, expires_at = now() "
            "WHERE tenant_id = $1 AND node_id = $2 AND epoch = $3",
            tenant_id,
            self.node_id,
            epoch,
        )

    async def owner(self, tenant_id: uuid.UUID) -> Owner | None:
        row = await self.pool.fetchrow(
            "SELECT lease.node_id, node.url, lease.expires_at < now() AS expired "
            "FROM tenant_leases lease LEFT JOIN engine_nodes node USING (node_id) "
            "WHERE lease.tenant_id = $1 AND lease.node_id IS NOT NULL",
            tenant_id,
        )
        return None if row is None else Owner(row["node_id"], row["url"], row["expired"])

    async def stopping(self) -> None:
        """This node is leaving: the others stop counting it as live."""
        await self.pool.execute(
            "UPDATE engine_nodes SET stopping = true WHERE node_id = $1", self.node_id
        )
        await self.notify()

    async def notify(self) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, str(self.node_id))

    # -- singletons --------------------------------------------------------------------------------

    async def hold_singleton(self, name: str) -> bool:
        """Take or renew the singleton lease `name`; whether this node holds it now."""
        epoch = await self.pool.fetchval(
            """
            INSERT INTO cluster_leases AS lease (name, node_id, epoch, expires_at)
            VALUES ($1, $2, 1, now() + make_interval(secs => $3))
            ON CONFLICT (name) DO UPDATE
            SET node_id = $2, expires_at = excluded.expires_at,
                epoch = lease.epoch + (lease.node_id IS DISTINCT FROM $2)::int
            WHERE lease.node_id = $2 OR lease.node_id IS NULL OR lease.expires_at < now()
            RETURNING epoch
            """,
            name,
            self.node_id,
            self.seconds,
        )
        return epoch is not None

    async def drop_singletons(self) -> None:
        await self.pool.execute(
            "UPDATE cluster_leases SET node_id = NULL, expires_at = now() WHERE node_id = $1",
            self.node_id,
        )

    async def sweep_nodes(self) -> int:
        """Rows of nodes silent for a day (their lanes go with them); how many."""
        result = await self.pool.execute(
            "DELETE FROM engine_nodes WHERE heartbeat_at < now() - interval '1 day' "
            "AND node_id NOT IN (SELECT node_id FROM tenant_leases WHERE node_id IS NOT NULL)"
        )
        return int(result.split()[-1])
