-- discard: mysql, default tables
DELETE FROM `txoutbox_inbox_failed` WHERE consumer = ? AND message_uuid IN ?
