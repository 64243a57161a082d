-- take: mysql, default table
SELECT id, uuid, topic, partition_key, payload, metadata, attempts FROM `txoutbox_outbox`
WHERE id IN ({ids})
	  AND delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= UTC_TIMESTAMP(6)
	  AND partition_key NOT IN (
		SELECT blocked_key FROM `txoutbox_outbox` WHERE blocked_key IS NOT NULL
		  AND (failed_at IS NOT NULL OR next_attempt_at > UTC_TIMESTAMP(6)))
ORDER BY id LIMIT {limit}
