-- The leader lease: one row per HA group (replicas of one installation).
-- A replica leads while it holds the row and keeps renewing it; a standby
-- takes the row over once `expires_at` (the database's clock, never a
-- replica's) has passed, and every takeover increments `term`. Every engine
-- write checks, in its own transaction, that the row still carries the
-- writer's term (`SELECT … FOR SHARE`), so a leader that was frozen past its
-- lease cannot write anything once a newer term exists.
CREATE TABLE leader_lease (
    -- current_database() || '.' || current_schema() unless --ha-group says otherwise.
    ha_group     TEXT PRIMARY KEY,
    -- The holder's replica id: random per process.
    holder       TEXT NOT NULL,
    -- For people: where the holder runs.
    holder_host  TEXT NOT NULL,
    holder_pid   BIGINT NOT NULL,
    -- Increases on every change of holder (the fencing token of engine writes).
    term         BIGINT NOT NULL CHECK (term > 0),
    acquired_at  TIMESTAMPTZ NOT NULL,
    renewed_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    -- The holder's advertised worker gRPC URL (--advertise-grpc), if any.
    grpc_url     TEXT,
    -- Server pids of the holder's lease session(s), recorded at each renewal:
    -- the next holder terminates them (those still alive since then).
    backend_pids INTEGER[] NOT NULL DEFAULT '{}'
);
