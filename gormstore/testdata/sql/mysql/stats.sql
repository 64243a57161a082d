-- stats: mysql, default table
SELECT topic,
	SUM(failed_at IS NULL) AS pending,
	SUM(failed_at IS NOT NULL) AS failed,
	TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN failed_at IS NULL THEN created_at END), UTC_TIMESTAMP(6)) / 1e6 AS age_secs
FROM `txoutbox_outbox` WHERE delivered_at IS NULL GROUP BY topic
