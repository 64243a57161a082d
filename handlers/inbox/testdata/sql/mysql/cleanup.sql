-- cleanup: mysql, default tables
DELETE t FROM `txoutbox_inbox` AS t JOIN (
	SELECT consumer, message_uuid FROM `txoutbox_inbox` WHERE received_at < @cutoff
	ORDER BY received_at LIMIT @batch FOR UPDATE SKIP LOCKED
) AS x USING (consumer, message_uuid)
