-- What is paused in each tenant: a queue, a task, a workflow (its steps) or a worker (by id).
-- Paused means nothing new of it is assigned; running attempts finish and triggers are still
-- accepted. A row here outlives restarts: every queue actor reads its tenant's rows at start.
CREATE TABLE pauses (
    tenant_id  uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('queue', 'task', 'workflow', 'worker')),
    name       text NOT NULL,
    reason     text,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind, name)
);
