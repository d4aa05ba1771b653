-- Every artifact of a run with its consumers (LEFT JOIN: one row per
-- artifact × consumer, consumer columns NULL when nobody read it yet).
SELECT a.id, a.run_id, a.task_id, a.task_instance_id, a.attempt, a.key, a.uri,
       a.size, a.sha256, a.created_at,
       i.task_id AS consumer_task_id,
       i.task_instance_id AS consumer_task_instance_id,
       i.attempt AS consumer_attempt,
       i.consumed_at
FROM artifacts AS a
LEFT JOIN artifact_inputs AS i ON i.artifact_id = a.id
WHERE a.run_id = $1
ORDER BY a.task_instance_id, a.attempt, a.key, i.consumed_at, i.task_instance_id
