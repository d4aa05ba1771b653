-- Artifact lineage (PostgreSQL): every object a task attempt left in its
-- output folder, and which attempts downloaded it as an input.

CREATE TABLE artifacts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    task_id          TEXT NOT NULL,
    task_instance_id BIGINT NOT NULL,
    -- The attempt that produced it.
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    -- Relative to the artifact store URL: runs/<run>/<task>/<attempt>/out/<path>.
    key              TEXT NOT NULL,
    uri              TEXT NOT NULL,
    size             BIGINT NOT NULL CHECK (size >= 0),
    sha256           TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    -- A report re-sent after a reconnect records nothing twice.
    UNIQUE (run_id, key)
);
CREATE INDEX artifacts_by_attempt ON artifacts (task_instance_id, attempt);

CREATE TABLE artifact_inputs (
    artifact_id      BIGINT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    -- The consuming attempt.
    run_id           UUID NOT NULL,
    task_id          TEXT NOT NULL,
    task_instance_id BIGINT NOT NULL,
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    consumed_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (artifact_id, task_instance_id, attempt)
);
CREATE INDEX artifact_inputs_by_consumer ON artifact_inputs (task_instance_id, attempt);
