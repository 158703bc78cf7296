-- The log of each durable run, by position: memoised steps, children spawned, waits. A replay
-- returns the result of every entry that is done; an open wait (done = false) is what a pending
-- durable run waits for, and what the engine re-arms after a restart.
CREATE TABLE durable_log (
    tenant_id    uuid NOT NULL,
    run_id       uuid NOT NULL,
    position     integer NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('memo', 'spawn', 'wait')),
    call         text NOT NULL,
    done         boolean NOT NULL,
    result       jsonb,
    wait         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (tenant_id, run_id, position)
);

CREATE INDEX durable_log_open ON durable_log (tenant_id, run_id) WHERE NOT done;

-- Durable runs waiting (status 'pending', no workflow) are loaded by their queue at start.
CREATE INDEX runs_pending_durable ON runs (tenant_id, queue)
    WHERE status = 'pending' AND workflow_run_id IS NULL;
