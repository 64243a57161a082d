-- failed_counts: mysql, default tables
SELECT consumer, status, count(*) AS n FROM `txoutbox_inbox_failed` GROUP BY consumer, status
