-- One metric of one task across the DAG's latest runs: per run, the value of
-- the latest attempt that reported it. Newest runs first ($4 = limit); the
-- caller reverses to oldest first for charts.
SELECT m.run_id, r.logical_date, m.attempt, m.value, m.recorded_at
FROM metrics AS m
JOIN runs AS r ON r.id = m.run_id
WHERE m.dag_id = $1
  AND m.task_id = $2
  AND m.name = $3
  AND m.attempt = (
      SELECT max(m2.attempt) FROM metrics AS m2
      WHERE m2.task_instance_id = m.task_instance_id AND m2.name = m.name
  )
ORDER BY m.run_id DESC
LIMIT $4
