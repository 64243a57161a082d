-- discard_uuids: mysql, default tables
SELECT message_uuid FROM `txoutbox_inbox_failed` WHERE consumer = ? AND message_uuid IN ? FOR UPDATE
