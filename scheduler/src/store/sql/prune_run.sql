-- Deletes one finished run past the retention; its task instances,
-- attempts, metrics and artifacts (and their consumers) go with it by
-- ON DELETE CASCADE. Every guard is in this one statement, so it cannot
-- race with the engine reopening the run (a clear moves it back to
-- `queued` with a compare-and-set first; whichever commits first wins and
-- the other matches nothing):
--   $1 the run, $2 the cutoff (its end must be before it).
DELETE FROM runs
WHERE id = $1
  AND state IN ('success', 'failed', 'cancelled')
  AND ended_at IS NOT NULL
  AND ended_at < $2
  -- Another run consumed one of its artifacts: that run still needs them.
  AND NOT EXISTS (
      SELECT 1 FROM artifacts a
      JOIN artifact_inputs i ON i.artifact_id = a.id
      WHERE a.run_id = runs.id AND i.run_id <> runs.id
  )
  -- The DAG's latest successful run: its metrics are what `when`
  -- conditions compare with (`previous` metrics).
  AND id NOT IN (
      SELECT s.id FROM runs s
      WHERE s.dag_id = runs.dag_id AND s.state = 'success'
      ORDER BY s.id DESC LIMIT 1
  )
  -- The DAG's latest scheduled run: where cron resumes after a restart.
  AND id NOT IN (
      SELECT c.id FROM runs c
      WHERE c.dag_id = runs.dag_id AND c.trigger = 'schedule'
      ORDER BY c.logical_date DESC LIMIT 1
  )
