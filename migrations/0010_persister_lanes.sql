-- The persister writes through lanes that commit concurrently (see taskyard.persister). A lane
-- whose batches could not be written twice records the id of its last committed batch in a row
-- of its own, so that a batch retried after a lost connection is never applied twice, and no
-- lane waits on another's row lock.
CREATE TABLE persister_lanes (
    node_id     uuid NOT NULL REFERENCES engine_nodes ON DELETE CASCADE,
    lane        text NOT NULL,
    last_batch  uuid,
    PRIMARY KEY (node_id, lane)
);

ALTER TABLE engine_nodes DROP COLUMN last_batch;
