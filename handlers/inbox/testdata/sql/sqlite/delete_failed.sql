-- delete_failed: sqlite, default tables
DELETE FROM "txoutbox_inbox_failed" WHERE id = ?
