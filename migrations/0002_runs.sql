-- Runs of tasks, their event history and logs, registered task definitions, engine nodes.

-- One row per run. Ids are UUIDv7 (time-ordered), so the primary key also orders runs by creation.
-- No foreign key to tenants: this is the hottest table, and tenants are never deleted under it.
CREATE TABLE runs (
    tenant_id        uuid NOT NULL,
    run_id           uuid NOT NULL,
    task             text NOT NULL,
    queue            text NOT NULL,
    status           text NOT NULL CHECK (status IN ('queued', 'assigned', 'running', 'succeeded',
                                                     'failed', 'cancelled', 'timed_out')),
    attempt          integer NOT NULL,
    priority         smallint NOT NULL,
    options          jsonb NOT NULL,
    input            jsonb,
    output           jsonb,
    error            jsonb,
    metadata         jsonb NOT NULL DEFAULT '{}',
    idempotency_key  text,
    worker_id        uuid,
    created_at       timestamptz NOT NULL,
    queued_at        timestamptz NOT NULL,
    retry_at         timestamptz,
    assigned_at      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, run_id)
);

CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Recovery loads the unfinished runs of each queue.
CREATE INDEX runs_active ON runs (tenant_id, queue, run_id)
    WHERE status IN ('queued', 'assigned', 'running');
CREATE INDEX runs_task ON runs (tenant_id, task, run_id);
CREATE INDEX runs_metadata ON runs USING gin (metadata jsonb_path_ops);

-- Every state transition of every run, with its time.
CREATE TABLE run_events (
    tenant_id  uuid NOT NULL,
    run_id     uuid NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    at         timestamptz NOT NULL,
    attempt    integer NOT NULL,
    type       text NOT NULL,
    worker_id  uuid,
    detail     jsonb
);
CREATE INDEX run_events_run ON run_events (tenant_id, run_id, seq);

CREATE TABLE run_logs (
    tenant_id  uuid NOT NULL,
    run_id     uuid NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    at         timestamptz NOT NULL,
    attempt    integer NOT NULL,
    level      text NOT NULL,
    message    text NOT NULL
);
CREATE INDEX run_logs_run ON run_logs (tenant_id, run_id, seq);

-- Task definitions as workers last registered them; used for runs triggered without options.
CREATE TABLE task_definitions (
    tenant_id   uuid NOT NULL,
    name        text NOT NULL,
    options     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- One row per engine process: the id of the last batch it committed, so a batch retried after a
-- lost connection is never applied twice.
CREATE TABLE engine_nodes (
    node_id     uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_batch  uuid
);
