DROP INDEX IF EXISTS "txoutbox_outbox_delivered_idx";
