-- take_topics: mysql, default table
SELECT id, uuid, topic, partition_key, payload, metadata, attempts FROM `txoutbox_outbox` AS o
WHERE o.id IN ({ids})
	  AND o.delivered_at IS NULL AND o.failed_at IS NULL AND o.next_attempt_at <= UTC_TIMESTAMP(6)
	  AND NOT EXISTS (
		SELECT 1 FROM `txoutbox_outbox` AS b WHERE b.blocked_key = o.partition_key
		  AND (b.failed_at IS NOT NULL OR b.next_attempt_at > UTC_TIMESTAMP(6)))
	  AND o.topic IN ({topics})
ORDER BY o.id LIMIT {limit}
