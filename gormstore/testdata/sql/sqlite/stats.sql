-- stats: sqlite, default table
SELECT topic,
	sum(failed_at IS NULL) AS pending,
	sum(failed_at IS NOT NULL) AS failed,
	(julianday('now') - julianday(min(CASE WHEN failed_at IS NULL THEN created_at END))) * 86400.0 AS age_secs
FROM "txoutbox_outbox" WHERE delivered_at IS NULL GROUP BY topic
