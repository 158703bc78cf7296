-- Crons and one-off schedules. A fire is a run whose idempotency key names the schedule and the
-- tick, so a tick fired twice (a restart before last_tick was written) is the same run.
CREATE TABLE schedules (
    tenant_id        uuid NOT NULL,
    schedule_id      uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('cron', 'once')),
    name             text,
    task             text,
    workflow         text,
    expression       text,
    timezone         text,
    at               timestamptz,
    input            jsonb,
    metadata         jsonb NOT NULL DEFAULT '{}',
    catch_up         text NOT NULL DEFAULT 'latest' CHECK (catch_up IN ('latest', 'all')),
    paused           boolean NOT NULL DEFAULT false,
    declared_in_code boolean NOT NULL DEFAULT false,
    last_tick        timestamptz,
    run_id           uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, schedule_id),
    CHECK ((task IS NULL) <> (workflow IS NULL))
);

CREATE UNIQUE INDEX schedules_cron_names ON schedules (tenant_id, coalesce(task, ''),
                                                       coalesce(workflow, ''), name)
    WHERE kind = 'cron';
