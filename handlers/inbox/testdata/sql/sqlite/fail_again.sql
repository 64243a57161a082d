-- fail_again: sqlite, default tables
UPDATE "txoutbox_inbox_failed" SET status = ?, error = ?, attempts = attempts + 1, failed_at = ? WHERE id = ?
