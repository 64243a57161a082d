-- fail: postgres, default table
UPDATE "txoutbox_outbox" AS o SET
	attempts = o.attempts + 1,
	last_error = f.err,
	next_attempt_at = CASE WHEN f.park THEN o.next_attempt_at ELSE now() + f.delay_us * interval '1 microsecond' END,
	failed_at = CASE WHEN f.park THEN now() END
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bool[]) AS f(id, err, delay_us, park)
WHERE o.id = f.id
