-- purge: sqlite, default table
DELETE FROM "txoutbox_outbox" WHERE id IN (
	SELECT id FROM "txoutbox_outbox"
	WHERE delivered_at IS NOT NULL AND delivered_at < ?
	ORDER BY delivered_at LIMIT ?)
