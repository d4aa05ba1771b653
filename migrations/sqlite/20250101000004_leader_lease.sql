-- The leader lease: one row per HA group. SQLite has one scheduling process
-- (see `app/db_lock.rs`), which always leads, but it takes the row too and
-- increments `term` at every start, so the same term fence guards every
-- engine write on both backends (see the PostgreSQL migration of the same
-- number for the columns). No backend pids: there is no server to ask.
CREATE TABLE leader_lease (
    ha_group     TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    holder_host  TEXT NOT NULL,
    holder_pid   INTEGER NOT NULL,
    term         INTEGER NOT NULL CHECK (term > 0),
    acquired_at  TEXT NOT NULL,
    renewed_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    grpc_url     TEXT
);
