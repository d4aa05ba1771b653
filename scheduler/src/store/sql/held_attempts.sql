-- Attempts a worker holds right now: its open attempt rows whose task is still
-- at that attempt number and still assigned or running.
SELECT a.task_instance_id, t.run_id, t.dag_id, t.task_id, a.attempt, t.state, a.gpus
FROM attempts AS a
JOIN task_instances AS t ON t.id = a.task_instance_id AND t.attempt = a.attempt
WHERE a.worker_id = $1
  AND a.ended_at IS NULL
  AND t.state IN ('assigned', 'running')
ORDER BY a.task_instance_id
