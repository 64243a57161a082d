-- cleanup_pick: mysql, default tables
SELECT consumer, message_uuid FROM `txoutbox_inbox` WHERE received_at < ?
ORDER BY received_at LIMIT ? FOR UPDATE SKIP LOCKED
