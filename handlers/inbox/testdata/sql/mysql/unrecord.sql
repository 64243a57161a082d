-- unrecord: mysql, default tables
DELETE FROM `txoutbox_inbox` WHERE consumer = ? AND message_uuid IN ?
