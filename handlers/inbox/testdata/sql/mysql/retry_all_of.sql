-- retry_all_of: mysql, default tables
UPDATE `txoutbox_inbox_failed` SET status = ? WHERE consumer = ? AND status = ?
