-- delete_failed: postgres, default tables
DELETE FROM "txoutbox_inbox_failed" WHERE id = ?
