-- Several engine nodes on one database (see docs/cluster.md). Each node beats in its row of
-- engine_nodes; each tenant is owned by the node holding its lease, which it renews before it
-- expires. Taking a lease over raises its epoch, and every batch the persister writes is fenced by
-- the epochs it holds: Postgres refuses the batch of a node whose lease has moved on.
ALTER TABLE engine_nodes
    ADD COLUMN name         text,
    ADD COLUMN url          text,
    ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN stopping     boolean NOT NULL DEFAULT false;

CREATE TABLE tenant_leases (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants ON DELETE CASCADE,
    node_id     uuid,                   -- NULL: handed back, free to take
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Work that must run once per cluster (sweeping dead nodes' rows, say), by name.
CREATE TABLE cluster_leases (
    name        text PRIMARY KEY,
    node_id     uuid,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The fence of one write batch: `tenants` are the tenants it writes for, `epochs` the epochs of
-- their leases as the writing node holds them. The lease rows are locked (FOR SHARE) until the
-- batch commits, so a takeover waits for a batch already fenced, and a batch fenced after a
-- takeover sees the new epoch and is refused, naming the tenants whose leases moved (SQLSTATE
-- TY001, their ids in DETAIL).
CREATE FUNCTION taskyard_fence(node uuid, tenants uuid[], epochs bigint[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    moved text;
BEGIN
    PERFORM 1 FROM tenant_leases WHERE tenant_id = ANY (tenants) ORDER BY tenant_id FOR SHARE;
    SELECT string_agg(held.tenant_id::text, ',') INTO moved
    FROM unnest(tenants, epochs) AS held (tenant_id, epoch)
    LEFT JOIN tenant_leases lease
        ON lease.tenant_id = held.tenant_id AND lease.node_id = node AND lease.epoch = held.epoch
    WHERE lease.tenant_id IS NULL;
    IF moved IS NOT NULL THEN
        RAISE EXCEPTION 'the leases of tenants % are no longer this node''s', moved
            USING ERRCODE = 'TY001', DETAIL = moved;
    END IF;
    RETURN true;
END
$$;
