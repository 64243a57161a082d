DROP INDEX IF EXISTS "txoutbox_outbox_topic_idx";
