-- retry_all_of: postgres, default tables
UPDATE "txoutbox_inbox_failed" SET status = ? WHERE consumer = ? AND status = ?
