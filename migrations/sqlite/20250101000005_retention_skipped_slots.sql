-- Bounded history and recorded skipped cron slots (issue 13).

-- The retention task scans finished runs by their end, oldest first.
CREATE INDEX runs_finished_by_end ON runs (ended_at) WHERE state IN ('success', 'failed', 'cancelled');

-- Cron slots missed beyond the catch-up limit are recorded instead of
-- vanishing: a running count on the DAG (served as `skipped_slots` by the
-- API) and one row per catch-up that skipped any, naming the range.
ALTER TABLE dags ADD COLUMN skipped_slots INTEGER NOT NULL DEFAULT 0 CHECK (skipped_slots >= 0);

CREATE TABLE skipped_slots (
    id                 INTEGER PRIMARY KEY,
    dag_id             TEXT NOT NULL REFERENCES dags (id),
    -- Slots skipped by this catch-up, and the first and last of them.
    slots              INTEGER NOT NULL CHECK (slots >= 1),
    first_logical_date TEXT NOT NULL,
    last_logical_date  TEXT NOT NULL,
    reason             TEXT NOT NULL,
    recorded_at        TEXT NOT NULL
) STRICT;
CREATE INDEX skipped_slots_by_dag ON skipped_slots (dag_id, id);
