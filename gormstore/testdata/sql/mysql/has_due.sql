-- has_due: mysql, default table
SELECT EXISTS (SELECT 1 FROM (
	SELECT o.id, o.partition_key FROM `txoutbox_outbox` AS o WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= UTC_TIMESTAMP(6)
	  AND NOT EXISTS (
		SELECT 1 FROM `txoutbox_outbox` AS b WHERE b.blocked_key = o.partition_key
		  AND (b.failed_at IS NOT NULL OR b.next_attempt_at > UTC_TIMESTAMP(6)))
	ORDER BY o.id LIMIT 1000
) w WHERE IS_FREE_LOCK(CONCAT(?, CASE WHEN partition_key = '' THEN CONCAT('#', id) ELSE SHA1(partition_key) END)) = 1)
