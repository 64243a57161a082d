-- insert_failed: postgres, default tables
INSERT INTO "txoutbox_inbox_failed" (consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (consumer, message_uuid) DO NOTHING
