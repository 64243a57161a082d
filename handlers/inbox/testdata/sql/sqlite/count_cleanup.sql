-- count_cleanup: sqlite, default tables
SELECT count(*) FROM "txoutbox_inbox" WHERE received_at < ?
