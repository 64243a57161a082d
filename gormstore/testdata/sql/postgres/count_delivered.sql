-- count_delivered: postgres, default table
SELECT count(*) FROM "txoutbox_outbox" WHERE delivered_at IS NOT NULL AND delivered_at < now() - ?::bigint * interval '1 microsecond'
