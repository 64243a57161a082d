-- fail: sqlite, default table
UPDATE "txoutbox_outbox" SET attempts = attempts + 1, last_error = @err,
	next_attempt_at = CASE WHEN @park THEN next_attempt_at ELSE @retry_at END,
	failed_at = CASE WHEN @park THEN @now END
WHERE id = @id
