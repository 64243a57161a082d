-- txoutbox: index for forwarders that relay only some topics (PostgreSQL).
-- A claim with outbox.ForwarderConfig.Topics reads each of its topics'
-- oldest due rows here, so a backlog of other topics (a broker that is down
-- for them) does not slow it: without the index every such claim read that
-- whole backlog through the pending index. Like the pending index it holds
-- only undelivered rows that are not parked.
CREATE INDEX IF NOT EXISTS "txoutbox_outbox_topic_idx" ON "txoutbox_outbox" (topic, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
