-- redrive: mysql, default tables
SELECT id, consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, DATE_FORMAT(failed_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS failed_at FROM `txoutbox_inbox_failed` WHERE consumer = ? AND status IN ? ORDER BY id LIMIT ?
