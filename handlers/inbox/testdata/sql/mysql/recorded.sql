-- recorded: mysql, default tables
SELECT message_uuid FROM `txoutbox_inbox` WHERE consumer = ? AND message_uuid IN ? AND record_token = ?
