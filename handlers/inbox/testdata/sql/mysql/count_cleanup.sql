-- count_cleanup: mysql, default tables
SELECT count(*) FROM `txoutbox_inbox` WHERE received_at < ?
