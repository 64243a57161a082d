-- txoutbox: drop the per-key index (PostgreSQL).
-- Claims take a key's rows from the window of the oldest due rows they read
-- through the pending index, not from a scan per key, so no statement reads
-- txoutbox_outbox_key_idx; every INSERT and every delivery still had to
-- write its entry. Dropping it takes a short exclusive lock on the table.
DROP INDEX IF EXISTS "txoutbox_outbox_key_idx";
