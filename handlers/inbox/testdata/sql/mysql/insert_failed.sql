-- insert_failed: mysql, default tables
INSERT INTO `txoutbox_inbox_failed` (consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id
