-- list_failed: mysql, default table
SELECT id, uuid, topic, partition_key, attempts, coalesce(last_error, '') AS last_error, created_at, failed_at
FROM `txoutbox_outbox` WHERE delivered_at IS NULL AND failed_at IS NOT NULL AND id > ? ORDER BY id LIMIT ?
