-- txoutbox: index for forwarders that relay only some topics (SQLite).
-- A claim with outbox.ForwarderConfig.Topics finds its topics' due rows here
-- instead of reading other topics' backlog through the pending index.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_topic_idx" ON "txoutbox_outbox" (topic, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
