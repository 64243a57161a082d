-- insert: mysql, default table
INSERT INTO `txoutbox_outbox` (uuid, topic, partition_key, payload, metadata) VALUES 
