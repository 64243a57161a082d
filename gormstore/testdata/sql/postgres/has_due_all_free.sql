-- has_due_all_free: postgres, default table
WITH blocked AS MATERIALIZED (
	SELECT DISTINCT partition_key FROM "txoutbox_outbox" WHERE delivered_at IS NULL AND partition_key <> '' AND (attempts > 0 OR failed_at IS NOT NULL)
	  AND (failed_at IS NOT NULL OR next_attempt_at > now())
), held AS MATERIALIZED (
	SELECT objid FROM pg_locks
	WHERE locktype = 'advisory' AND classid = $1::int4::oid AND objsubid = 2 AND granted
	  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
	  AND pid <> pg_backend_pid()
)
SELECT EXISTS (SELECT 1 FROM (SELECT id, partition_key FROM "txoutbox_outbox"
	WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
	  AND partition_key NOT IN (SELECT partition_key FROM blocked)
	  AND (partition_key = '' OR hashtext(partition_key)::oid NOT IN (SELECT objid FROM held))
	ORDER BY id LIMIT 1000) w
	WHERE CASE WHEN partition_key = '' THEN true ELSE pg_try_advisory_xact_lock($1, hashtext(partition_key)) END)
