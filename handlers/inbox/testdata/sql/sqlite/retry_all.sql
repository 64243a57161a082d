-- retry_all: sqlite, default tables
UPDATE "txoutbox_inbox_failed" SET status = ? WHERE status = ?
