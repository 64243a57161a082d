-- insert: mysql, default table
INSERT INTO `txoutbox_outbox` (uuid, topic, partition_key, payload, metadata, created_at, next_attempt_at) VALUES 
