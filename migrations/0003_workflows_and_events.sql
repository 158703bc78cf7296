-- DAG workflows (versioned definitions), their runs and steps, child runs, and events.

-- A workflow run is a row of `runs` too (kind 'workflow'), so reading, listing, waiting for and
-- cancelling it work as for any run. Its steps are runs with workflow_run_id and step set; a step
-- row exists once the engine has decided about it ('pending' while it waits on wait_for
-- conditions, 'skipped' when a condition or its parents skipped it).
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN (
    'pending', 'queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out',
    'skipped'));
ALTER TABLE runs
    ADD COLUMN kind text NOT NULL DEFAULT 'task' CHECK (kind IN ('task', 'workflow')),
    ADD COLUMN workflow_version integer,
    ADD COLUMN workflow_run_id uuid,
    ADD COLUMN step text,
    ADD COLUMN parent_run_id uuid,
    -- What a step receives besides the input: its parents' outputs, skipped parents, failures.
    ADD COLUMN context jsonb,
    ADD COLUMN wait_started_at timestamptz;

-- One row per step of a workflow run: a decision replayed after a crash cannot create it twice.
CREATE UNIQUE INDEX runs_steps ON runs (tenant_id, workflow_run_id, step)
    WHERE workflow_run_id IS NOT NULL;
CREATE INDEX runs_children ON runs (tenant_id, parent_run_id) WHERE parent_run_id IS NOT NULL;
-- Recovery loads the unfinished workflow runs of each tenant.
CREATE INDEX runs_active_workflows ON runs (tenant_id, run_id)
    WHERE kind = 'workflow' AND status = 'running';

CREATE TABLE workflows (
    tenant_id   uuid NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL,
    digest      text NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version),
    UNIQUE (tenant_id, name, digest)
);

CREATE TABLE events (
    tenant_id   uuid NOT NULL,
    event_id    uuid NOT NULL,
    key         text NOT NULL,
    payload     jsonb,
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    triggered   uuid[] NOT NULL DEFAULT '{}',  -- the workflow runs this event started
    replay_of   uuid,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX events_key ON events (tenant_id, key, event_id);
CREATE INDEX events_metadata ON events USING gin (metadata jsonb_path_ops);
