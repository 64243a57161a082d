-- purge: postgres, default table
DELETE FROM "txoutbox_outbox" WHERE id = ANY(ARRAY(
	SELECT id FROM "txoutbox_outbox"
	WHERE delivered_at IS NOT NULL AND delivered_at < now() - ?::bigint * interval '1 microsecond'
	ORDER BY delivered_at LIMIT ? FOR UPDATE SKIP LOCKED))
