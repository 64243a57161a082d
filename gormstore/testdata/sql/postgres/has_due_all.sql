-- has_due_all: postgres, default table
WITH blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > now())
)
SELECT EXISTS (SELECT 1 FROM (SELECT id, partition_key FROM "txoutbox_outbox"
	WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
	  AND partition_key NOT IN (SELECT partition_key FROM blocked)
	ORDER BY id LIMIT 1000) w
	WHERE CASE WHEN partition_key = '' THEN true ELSE pg_try_advisory_xact_lock($1, hashtext(partition_key)) END)
