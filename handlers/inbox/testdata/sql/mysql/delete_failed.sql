-- delete_failed: mysql, default tables
DELETE FROM `txoutbox_inbox_failed` WHERE id = ?
