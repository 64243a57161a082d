-- fail: mysql, default table
UPDATE `txoutbox_outbox` SET attempts = attempts + 1, last_error = ?,
	next_attempt_at = CASE WHEN ? THEN next_attempt_at ELSE UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND END,
	failed_at = CASE WHEN ? THEN UTC_TIMESTAMP(6) END
WHERE id = ?
