-- retry_all: postgres, default tables
UPDATE "txoutbox_inbox_failed" SET status = ? WHERE status = ?
