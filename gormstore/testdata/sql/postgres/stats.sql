-- stats: postgres, default table
SELECT topic,
	count(*) FILTER (WHERE failed_at IS NULL) AS pending,
	count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed,
	EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE failed_at IS NULL))::float8 AS age_secs
FROM "txoutbox_outbox" WHERE delivered_at IS NULL GROUP BY topic
