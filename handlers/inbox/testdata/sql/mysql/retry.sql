-- retry: mysql, default tables
UPDATE `txoutbox_inbox_failed` SET status = ? WHERE consumer = ? AND message_uuid IN ? AND status = ?
