-- Registers a DAG on first sight; later sightings reactivate it and refresh its
-- file path. `paused` is left alone: pausing is the user's decision.
INSERT INTO dags (id, paused, active, file_path, created_at, updated_at)
VALUES ($1, FALSE, TRUE, $2, $3, $3)
ON CONFLICT (id) DO UPDATE
SET active = TRUE,
    file_path = COALESCE(excluded.file_path, dags.file_path),
    updated_at = excluded.updated_at
