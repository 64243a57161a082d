-- list_failed_of: sqlite, default tables
SELECT id, consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at FROM "txoutbox_inbox_failed" WHERE id > ? AND consumer = ? ORDER BY id LIMIT ?
