-- Flow control: each run's concurrency keys, rate-limit buckets and units, and sticky worker,
-- worked out when it was created (NULL for the many runs that have none).
ALTER TABLE runs ADD COLUMN flow jsonb;

-- Rate limits: the ones set through the API (configured) and the buckets of dynamic keys, with
-- the units taken in their current window (written behind, with the assignments that took them).
CREATE TABLE rate_limits (
    tenant_id   uuid NOT NULL,
    key         text NOT NULL,
    "limit"     integer NOT NULL CHECK ("limit" > 0),
    duration    text NOT NULL CHECK (duration IN ('second', 'minute', 'hour', 'day')),
    configured  boolean NOT NULL DEFAULT false,
    usage       jsonb NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
