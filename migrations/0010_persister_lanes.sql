-- The persister writes through two lanes that commit concurrently: ordered state changes, and
-- the runs applications trigger (see taskyard.persister). Each lane records the id of its last
-- committed batch in a row of its own, so that a batch retried after a lost connection is never
-- applied twice and neither lane waits on the other's row lock.
CREATE TABLE persister_lanes (
    node_id     uuid NOT NULL REFERENCES engine_nodes ON DELETE CASCADE,
    lane        text NOT NULL,
    last_batch  uuid,
    PRIMARY KEY (node_id, lane)
);

ALTER TABLE engine_nodes DROP COLUMN last_batch;
