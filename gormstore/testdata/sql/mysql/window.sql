-- window: mysql, default table
SELECT o.id, o.partition_key FROM `txoutbox_outbox` AS o
WHERE o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= UTC_TIMESTAMP(6)
	  AND NOT EXISTS (
		SELECT 1 FROM `txoutbox_outbox` AS b WHERE b.blocked_key = o.partition_key
		  AND (b.failed_at IS NOT NULL OR b.next_attempt_at > UTC_TIMESTAMP(6))){exclude}
ORDER BY o.id LIMIT {window}
