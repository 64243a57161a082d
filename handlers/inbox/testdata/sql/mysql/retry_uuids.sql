-- retry_uuids: mysql, default tables
SELECT message_uuid FROM `txoutbox_inbox_failed` WHERE status <> ? AND consumer = ? AND message_uuid IN ? AND status = ? FOR UPDATE
