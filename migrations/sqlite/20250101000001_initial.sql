-- Trainyard schema v1 (SQLite). Timestamps are RFC 3339 UTC text (sortable as text),
-- BLOBs are 16-byte blobs, JSON is text. Every state column carries a CHECK that
-- mirrors the Rust enums in trainyard_core::state; keep them in sync.

CREATE TABLE dags (
    id                 TEXT PRIMARY KEY,
    paused             INTEGER NOT NULL DEFAULT 0,
    -- FALSE once the DAG's file is deleted; history stays.
    active             INTEGER NOT NULL DEFAULT 1,
    current_version_id INTEGER REFERENCES dag_versions (id),
    file_path          TEXT,
    -- Last parse error of the file; the last good version stays current.
    parse_error        TEXT,
    parse_error_at     TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
) STRICT;

CREATE TABLE dag_versions (
    id           INTEGER PRIMARY KEY,
    dag_id       TEXT NOT NULL REFERENCES dags (id),
    content_hash TEXT NOT NULL,
    source       TEXT NOT NULL,
    spec         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (dag_id, content_hash)
) STRICT;

CREATE TABLE runs (
    id              BLOB PRIMARY KEY,
    dag_id          TEXT NOT NULL REFERENCES dags (id),
    version_id      INTEGER NOT NULL REFERENCES dag_versions (id),
    logical_date    TEXT,
    trigger         TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'backfill')),
    params          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed', 'cancelled')),
    idempotency_key TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    ended_at        TEXT,
    updated_at      TEXT NOT NULL,
    CHECK (trigger <> 'schedule' OR logical_date IS NOT NULL)
) STRICT;
-- A cron slot exists at most once, across restarts and scheduler replicas.
CREATE UNIQUE INDEX runs_schedule_slot ON runs (dag_id, logical_date) WHERE trigger = 'schedule';
CREATE UNIQUE INDEX runs_idempotency_key ON runs (dag_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_dag ON runs (dag_id, id);
CREATE INDEX runs_active ON runs (id) WHERE state IN ('queued', 'running');

CREATE TABLE task_instances (
    id            INTEGER PRIMARY KEY,
    run_id        BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- Denormalised from runs so claims can filter by DAG without a join.
    dag_id        TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'assigned', 'running', 'success', 'failed',
                                                 'up_for_retry', 'upstream_failed', 'skipped', 'cancelled', 'lost')),
    -- Number of the latest attempt (0 = never tried). Only grows: it is the fencing token.
    attempt       INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts  INTEGER NOT NULL CHECK (max_attempts >= 1),
    priority      INTEGER NOT NULL DEFAULT 0,
    pool          TEXT NOT NULL DEFAULT 'default',
    resources     TEXT NOT NULL,
    -- When it last became ready: the FIFO key among equal priorities.
    ready_at      TEXT,
    queued_at     TEXT,
    next_retry_at TEXT,
    started_at    TEXT,
    ended_at      TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (run_id, task_id)
) STRICT;
-- The hot queue: only ready rows are in this index, in claim order.
CREATE INDEX task_instances_ready ON task_instances (priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE state = 'up_for_retry';
CREATE INDEX task_instances_in_flight ON task_instances (state) WHERE state IN ('assigned', 'running', 'lost');

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    task_instance_id INTEGER NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    run_id           BLOB NOT NULL,
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    worker_id        BLOB,
    gpus             TEXT NOT NULL,
    outcome          TEXT CHECK (outcome IN ('success', 'failed', 'timed_out', 'lost', 'cancelled', 'handed_back')),
    exit_code        INTEGER,
    error            TEXT,
    log_location     TEXT,
    assigned_at      TEXT NOT NULL,
    started_at       TEXT,
    ended_at         TEXT,
    UNIQUE (task_instance_id, attempt)
) STRICT;
CREATE INDEX attempts_open_by_worker ON attempts (worker_id) WHERE ended_at IS NULL;
CREATE INDEX attempts_by_run ON attempts (run_id);

CREATE TABLE workers (
    id                BLOB PRIMARY KEY,
    name              TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('active', 'draining', 'lost', 'offline')),
    resources         TEXT NOT NULL,
    gpus              TEXT NOT NULL,
    labels            TEXT NOT NULL,
    registered_at     TEXT NOT NULL,
    last_heartbeat_at TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;

CREATE TABLE metrics (
    id               INTEGER PRIMARY KEY,
    run_id           BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    dag_id           TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    task_instance_id INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    name             TEXT NOT NULL,
    value            REAL NOT NULL,
    recorded_at      TEXT NOT NULL,
    UNIQUE (task_instance_id, attempt, name)
) STRICT;
CREATE INDEX metrics_by_run ON metrics (run_id);
CREATE INDEX metrics_series ON metrics (dag_id, task_id, name, run_id);

-- Append-only log of every state change: never updated, never deleted by the scheduler.
CREATE TABLE events (
    id               INTEGER PRIMARY KEY,
    run_id           BLOB NOT NULL,
    task_instance_id INTEGER,
    task_id          TEXT,
    entity           TEXT NOT NULL CHECK (entity IN ('run', 'task')),
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    attempt          INTEGER,
    actor            TEXT NOT NULL,
    reason           TEXT,
    at               TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_run ON events (run_id, id);
