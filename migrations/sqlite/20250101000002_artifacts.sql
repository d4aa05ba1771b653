-- Artifact lineage (SQLite): every object a task attempt left in its output
-- folder, and which attempts downloaded it as an input.

CREATE TABLE artifacts (
    id               INTEGER PRIMARY KEY,
    run_id           BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id          TEXT NOT NULL,
    task_instance_id INTEGER NOT NULL,
    -- The attempt that produced it.
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    -- Relative to the artifact store URL: runs/<run>/<task>/<attempt>/out/<path>.
    key              TEXT NOT NULL,
    uri              TEXT NOT NULL,
    size             INTEGER NOT NULL CHECK (size >= 0),
    sha256           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    -- A report re-sent after a reconnect records nothing twice.
    UNIQUE (run_id, key)
) STRICT;
CREATE INDEX artifacts_by_attempt ON artifacts (task_instance_id, attempt);

CREATE TABLE artifact_inputs (
    artifact_id      INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    -- The consuming attempt.
    run_id           BLOB NOT NULL,
    task_id          TEXT NOT NULL,
    task_instance_id INTEGER NOT NULL,
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    consumed_at      TEXT NOT NULL,
    PRIMARY KEY (artifact_id, task_instance_id, attempt)
) STRICT;
CREATE INDEX artifact_inputs_by_consumer ON artifact_inputs (task_instance_id, attempt);
