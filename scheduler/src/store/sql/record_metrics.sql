-- One metric of one attempt; a repeated report overwrites the value.
INSERT INTO metrics (run_id, dag_id, task_id, task_instance_id, attempt, name, value, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (task_instance_id, attempt, name) DO UPDATE
SET value = excluded.value, recorded_at = excluded.recorded_at
