-- record_many: mysql, default tables
INSERT INTO `txoutbox_inbox` (consumer, message_uuid, received_at, record_token) VALUES (?, ?, ?, ?), (?, ?, ?, ?) ON DUPLICATE KEY UPDATE consumer = consumer
