-- has_due: mysql, default table
SELECT EXISTS (SELECT 1 FROM (
	SELECT id, partition_key FROM `txoutbox_outbox` WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= UTC_TIMESTAMP(6)
	  AND partition_key NOT IN (
		SELECT blocked_key FROM `txoutbox_outbox` WHERE blocked_key IS NOT NULL
		  AND (failed_at IS NOT NULL OR next_attempt_at > UTC_TIMESTAMP(6)))
	ORDER BY id LIMIT 1000
) w WHERE IS_FREE_LOCK(CONCAT(?, CASE WHEN partition_key = '' THEN CONCAT('#', id) ELSE SHA1(partition_key) END)) = 1)
