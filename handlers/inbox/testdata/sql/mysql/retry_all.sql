-- retry_all: mysql, default tables
UPDATE `txoutbox_inbox_failed` SET status = ? WHERE status = ?
