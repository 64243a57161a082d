-- count_cleanup: postgres, default tables
SELECT count(*) FROM "txoutbox_inbox" WHERE received_at < ?
