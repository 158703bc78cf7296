-- History is partitioned by time, so that retention drops a day at a time (docs/operations.md).
--
-- runs, run_events, run_logs and durable_log are range-partitioned by run_id, events by event_id:
-- ids are UUIDv7, whose first 48 bits are the Unix millisecond they were made, and UUIDs compare
-- bytewise, so a day is a range of ids. A run's rows never move (they are not partitioned by when
-- the run finished), its history shares its partition's bounds, and a tree of runs (a workflow
-- run's steps, children and theirs) takes its root's time (taskyard.ids.id_at_time_of).
--
-- One partition a UTC day (`runs_p20261207`), made days ahead by the engine; a DEFAULT partition
-- (`runs_default`) takes what falls outside them (an id chosen by an application whose clock is
-- off, or an outbox row drained after its day was dropped). An existing table is not copied: it
-- becomes the partition `<table>_legacy` of every id up to the start of tomorrow, checked by a
-- constraint validated first (under a lock that lets writes go on), so attaching it reads nothing.
-- Unique indexes without the partition key cannot exist on a partitioned table: idempotency keys
-- move to a table of their own, and a workflow's step is unique because its id is derived from
-- the workflow run's and its name.
--
-- The parts below commit one by one (each can run again after a crash between them).

-- The first id of a millisecond: the lower bound of the partition starting then.
CREATE OR REPLACE FUNCTION taskyard_uuid_at(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- The partitions of `day` (a UTC date) and the `ahead` days after it, for every history table,
-- made when missing. A day whose ids the DEFAULT partition already holds is left to it (creating
-- it would fail), with a warning.
CREATE OR REPLACE FUNCTION taskyard_add_history_partitions(day date, ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    made integer := 0;
    tbl text;
    d date;
    name text;
    legacy_end uuid;
BEGIN
    FOR d IN SELECT generate_series(day, day + ahead, interval '1 day')::date LOOP
        FOREACH tbl IN ARRAY ARRAY['runs', 'run_events', 'run_logs', 'durable_log', 'events'] LOOP
            name := tbl || '_p' || to_char(d, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(name) IS NOT NULL;
            -- A day the legacy partition covers (up to its upper bound) is the legacy's.
            SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([0-9a-f-]+)''\)')::uuid
            INTO legacy_end
            FROM pg_class c WHERE c.oid = to_regclass(tbl || '_legacy');
            CONTINUE WHEN legacy_end IS NOT NULL
                AND taskyard_uuid_at(d::timestamp AT TIME ZONE 'UTC') < legacy_end;
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               name, tbl,
                               taskyard_uuid_at(d::timestamp AT TIME ZONE 'UTC'),
                               taskyard_uuid_at((d + 1)::timestamp AT TIME ZONE 'UTC'));
                made := made + 1;
            EXCEPTION WHEN check_violation OR invalid_object_definition THEN
                RAISE WARNING 'partition % not made: %', name, SQLERRM;
            END;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

CREATE TABLE IF NOT EXISTS taskyard_legacy_bounds (
    table_name  text PRIMARY KEY,
    bound       uuid NOT NULL
);

-- A table that holds rows keeps them as its legacy partition, bounded at the start of tomorrow.
DO $$
DECLARE
    tbl text;
    col text;
    bound uuid := taskyard_uuid_at((current_date + 1)::timestamp AT TIME ZONE 'UTC');
    has_rows boolean;
BEGIN
    FOR tbl, col IN VALUES ('runs', 'run_id'), ('run_events', 'run_id'), ('run_logs', 'run_id'),
                           ('durable_log', 'run_id'), ('events', 'event_id') LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM taskyard_legacy_bounds WHERE table_name = tbl);
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', tbl) INTO has_rows;
        CONTINUE WHEN NOT has_rows;
        INSERT INTO taskyard_legacy_bounds VALUES (tbl, bound);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I < %L) NOT VALID',
                       tbl, tbl || '_legacy_bound', col, bound);
    END LOOP;
END
$$;

-- A tenant's own retention (NULL: the engine's --retention-days).
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS retention_days double precision
    CHECK (retention_days > 0);

CREATE TABLE IF NOT EXISTS run_keys (
    tenant_id  uuid NOT NULL,
    key        text NOT NULL,
    run_id     uuid NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX IF NOT EXISTS run_keys_run ON run_keys (run_id);  -- retention deletes the keys of a day's runs
INSERT INTO run_keys (tenant_id, key, run_id)
SELECT tenant_id, idempotency_key, run_id FROM runs WHERE idempotency_key IS NOT NULL
ON CONFLICT DO NOTHING;

-- taskyard: commit

-- Reads every legacy row once; writes go on meanwhile (SHARE UPDATE EXCLUSIVE).
DO $$
DECLARE
    tbl text;
BEGIN
    FOR tbl IN SELECT table_name FROM taskyard_legacy_bounds LOOP
        EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', tbl, tbl || '_legacy_bound');
    END LOOP;
END
$$;

-- taskyard: commit, outside a transaction

-- The two indexes the partitioned table has and the old one lacks, built beside the writes, so
-- that attaching the legacy table adopts them instead of building them under a lock.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_workflow_steps_legacy
    ON runs (tenant_id, workflow_run_id, step) WHERE workflow_run_id IS NOT NULL;

-- taskyard: commit, outside a transaction

CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_by_task_legacy ON runs (task, tenant_id, run_id);

-- taskyard: commit

-- Each table becomes a partitioned table of the same columns, constraints and indexes (unique
-- ones only where they hold the partition key); the old table is attached as its legacy
-- partition, or dropped when it was empty.
CREATE OR REPLACE FUNCTION taskyard_partition_table(tbl text, col text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    legacy text := tbl || '_legacy';
    bound uuid := (SELECT b.bound FROM taskyard_legacy_bounds b WHERE b.table_name = tbl);
    definitions text[];
    definition text;
    primary_key text;
    index_name text;
    identity_column text;
    next_value bigint;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = tbl::regclass) = 'p' THEN
        RETURN;  -- done before
    END IF;
    SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO definitions
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = tbl::regclass AND NOT i.indisprimary AND NOT i.indisunique
      AND c.relname NOT LIKE '%\_legacy' AND c.relname <> 'runs_task';
    SELECT pg_get_constraintdef(oid) INTO primary_key
    FROM pg_constraint WHERE conrelid = tbl::regclass AND contype = 'p';
    SELECT attname INTO identity_column
    FROM pg_attribute WHERE attrelid = tbl::regclass AND attidentity <> '' AND NOT attisdropped;
    IF identity_column IS NOT NULL THEN
        next_value := coalesce(pg_sequence_last_value(
            pg_get_serial_sequence(tbl, identity_column)::regclass), 0) + 1;
    END IF;

    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl, legacy);
    FOR index_name IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = legacy::regclass AND c.relname NOT LIKE '%\_legacy'
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', index_name, index_name || '_legacy');
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                   'INCLUDING IDENTITY INCLUDING STORAGE) PARTITION BY RANGE (%I)',
                   tbl, legacy, col);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT IF EXISTS %I', tbl, tbl || '_legacy_bound');
    IF primary_key IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I ADD %s', tbl, primary_key);
    END IF;
    FOREACH definition IN ARRAY coalesce(definitions, '{}') LOOP
        EXECUTE definition;  -- names the table, which is now the partitioned one
    END LOOP;
    IF tbl = 'runs' THEN
        CREATE INDEX runs_workflow_steps ON runs (tenant_id, workflow_run_id, step)
            WHERE workflow_run_id IS NOT NULL;
        -- By task, the task first: with tenant_id first it would tie with the primary key for
        -- a lookup by tenant and run id on a small partition, and a plan cached then would
        -- scan all of a tenant's runs per lookup once the day's partition has grown.
        CREATE INDEX runs_by_task ON runs (task, tenant_id, run_id);
    END IF;
    IF identity_column IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I RESTART WITH %s',
                       tbl, identity_column, next_value);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I DROP IDENTITY', legacy, identity_column);
    END IF;
    IF bound IS NULL THEN
        EXECUTE format('DROP TABLE %I', legacy);
    ELSE
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       tbl, legacy, bound);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', legacy, tbl || '_legacy_bound');
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', tbl || '_default', tbl);
END
$$;

SELECT taskyard_partition_table('runs', 'run_id');
SELECT taskyard_partition_table('run_events', 'run_id');
SELECT taskyard_partition_table('run_logs', 'run_id');
SELECT taskyard_partition_table('durable_log', 'run_id');
SELECT taskyard_partition_table('events', 'event_id');
DROP FUNCTION taskyard_partition_table(text, text);
DROP TABLE taskyard_legacy_bounds;
-- The legacy table's unique indexes stay with it (its steps have ids of their own); its
-- idempotency keys are in run_keys now.
DROP INDEX IF EXISTS runs_idempotency_legacy;
DROP INDEX IF EXISTS runs_task_legacy;  -- runs_by_task_legacy serves its queries
SELECT taskyard_add_history_partitions(current_date, 2);
