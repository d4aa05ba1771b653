-- The run holding a schedule slot or an idempotency key that a new run collided with.
-- $1 dag, $2 trigger of the new run, $3 its logical date, $4 its idempotency key.
SELECT id, dag_id, version_id, logical_date, trigger, params, state,
       idempotency_key, created_at, started_at, ended_at, updated_at
FROM runs
WHERE dag_id = $1
  AND (
      ($2 = 'schedule' AND trigger = 'schedule' AND logical_date = $3)
      OR ($4 IS NOT NULL AND idempotency_key = $4)
  )
LIMIT 1
