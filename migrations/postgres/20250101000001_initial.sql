-- Trainyard schema v1 (PostgreSQL). Every state column carries a CHECK that
-- mirrors the Rust enums in trainyard_core::state; keep them in sync.

CREATE TABLE dags (
    id                 TEXT PRIMARY KEY,
    paused             BOOLEAN NOT NULL DEFAULT FALSE,
    -- FALSE once the DAG's file is deleted; history stays.
    active             BOOLEAN NOT NULL DEFAULT TRUE,
    current_version_id BIGINT,
    file_path          TEXT,
    -- Last parse error of the file; the last good version stays current.
    parse_error        TEXT,
    parse_error_at     TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE TABLE dag_versions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id       TEXT NOT NULL REFERENCES dags (id),
    content_hash TEXT NOT NULL,
    source       TEXT NOT NULL,
    spec         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (dag_id, content_hash)
);

ALTER TABLE dags
    ADD CONSTRAINT dags_current_version_fk FOREIGN KEY (current_version_id) REFERENCES dag_versions (id);

CREATE TABLE runs (
    id              UUID PRIMARY KEY,
    dag_id          TEXT NOT NULL REFERENCES dags (id),
    version_id      BIGINT NOT NULL REFERENCES dag_versions (id),
    logical_date    TIMESTAMPTZ,
    trigger         TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'backfill')),
    params          JSONB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed', 'cancelled')),
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL,
    CHECK (trigger <> 'schedule' OR logical_date IS NOT NULL)
);
-- A cron slot exists at most once, across restarts and scheduler replicas.
CREATE UNIQUE INDEX runs_schedule_slot ON runs (dag_id, logical_date) WHERE trigger = 'schedule';
CREATE UNIQUE INDEX runs_idempotency_key ON runs (dag_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_dag ON runs (dag_id, id);
CREATE INDEX runs_active ON runs (id) WHERE state IN ('queued', 'running');

CREATE TABLE task_instances (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
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
    resources     JSONB NOT NULL,
    -- When it last became ready: the FIFO key among equal priorities.
    ready_at      TIMESTAMPTZ,
    queued_at     TIMESTAMPTZ,
    next_retry_at TIMESTAMPTZ,
    started_at    TIMESTAMPTZ,
    ended_at      TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (run_id, task_id)
);
-- The hot queue: only ready rows are in this index, in claim order.
CREATE INDEX task_instances_ready ON task_instances (priority DESC, ready_at, id) WHERE state = 'ready';
CREATE INDEX task_instances_retry ON task_instances (next_retry_at) WHERE state = 'up_for_retry';
CREATE INDEX task_instances_in_flight ON task_instances (state) WHERE state IN ('assigned', 'running', 'lost');

CREATE TABLE attempts (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_instance_id BIGINT NOT NULL REFERENCES task_instances (id) ON DELETE CASCADE,
    run_id           UUID NOT NULL,
    attempt          INTEGER NOT NULL CHECK (attempt >= 1),
    worker_id        UUID,
    gpus             JSONB NOT NULL,
    outcome          TEXT CHECK (outcome IN ('success', 'failed', 'timed_out', 'lost', 'cancelled', 'handed_back')),
    exit_code        INTEGER,
    error            TEXT,
    log_location     TEXT,
    assigned_at      TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    ended_at         TIMESTAMPTZ,
    UNIQUE (task_instance_id, attempt)
);
CREATE INDEX attempts_open_by_worker ON attempts (worker_id) WHERE ended_at IS NULL;
CREATE INDEX attempts_by_run ON attempts (run_id);

CREATE TABLE workers (
    id                UUID PRIMARY KEY,
    name              TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('active', 'draining', 'lost', 'offline')),
    resources         JSONB NOT NULL,
    gpus              JSONB NOT NULL,
    labels            JSONB NOT NULL,
    registered_at     TIMESTAMPTZ NOT NULL,
    last_heartbeat_at TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE metrics (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    dag_id           TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    task_instance_id BIGINT NOT NULL,
    attempt          INTEGER NOT NULL,
    name             TEXT NOT NULL,
    value            DOUBLE PRECISION NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (task_instance_id, attempt, name)
);
CREATE INDEX metrics_by_run ON metrics (run_id);
CREATE INDEX metrics_series ON metrics (dag_id, task_id, name, run_id);

-- Append-only log of every state change: never updated, never deleted by the scheduler.
CREATE TABLE events (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           UUID NOT NULL,
    task_instance_id BIGINT,
    task_id          TEXT,
    entity           TEXT NOT NULL CHECK (entity IN ('run', 'task')),
    from_state       TEXT,
    to_state         TEXT NOT NULL,
    attempt          INTEGER,
    actor            TEXT NOT NULL,
    reason           TEXT,
    at               TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, id);
