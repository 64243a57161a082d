-- has_due_topics: sqlite, default table
SELECT EXISTS (SELECT 1 FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= @now AND topic IN @topics
  AND partition_key NOT IN (
	SELECT partition_key FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > @now)))
