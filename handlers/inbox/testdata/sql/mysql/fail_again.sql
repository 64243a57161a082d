-- fail_again: mysql, default tables
UPDATE `txoutbox_inbox_failed` SET status = ?, error = ?, attempts = attempts + 1, failed_at = ? WHERE id = ?
