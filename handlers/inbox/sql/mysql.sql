{{/*
Inbox statements of MySQL 8.0+ and MariaDB 10.6+, with the shared ones of
inbox.sql; see there for the data. .T and .F are quoted with backticks:
MySQL reads a double-quoted name as a string unless ANSI_QUOTES is set.
Every statement here is text both databases accept; the comments say where
they differ. The final text of each statement is in ../testdata/sql/mysql.
*/}}

{{/*
A row's fourth value is the batch's record_token (mysqlDriver.record).
*/}}
{{define "record_row"}}(?, ?, ?, ?){{end}}

{{/*
MySQL has neither ON CONFLICT nor INSERT ... RETURNING (MariaDB has
RETURNING since 10.5): a recorded row is skipped by ON DUPLICATE KEY UPDATE
with an assignment that changes nothing, and recorded reads back the rows
that carry the batch's token. INSERT IGNORE would skip it too, but it also
turns errors into warnings: a value too long for its column would be
truncated and stored. VALUES() in the assignment is not needed, so neither
MySQL 8.0.20's deprecation of it nor its row alias, which MariaDB lacks,
matters.
*/}}
{{define "record_many"}}INSERT INTO {{.T}} (consumer, message_uuid, received_at, record_token) VALUES {values} ON DUPLICATE KEY UPDATE consumer = consumer{{end}}

{{/* The UUIDs among the batch's that this batch inserted. */}}
{{define "recorded"}}SELECT message_uuid FROM {{.T}} WHERE consumer = ? AND message_uuid IN ? AND record_token = ?{{end}}

{{/*
The batch Cleanup deletes: the oldest rows, read along the received_at
index and locked with SKIP LOCKED, so that cleaners running at once take
disjoint batches (two DELETE ... ORDER BY received_at LIMIT of the same
rows deadlock). unrecord then deletes them by key (mysqlDriver.cleanup).
*/}}
{{define "cleanup_pick"}}SELECT consumer, message_uuid FROM {{.T}} WHERE received_at < ?
ORDER BY received_at LIMIT ? FOR UPDATE SKIP LOCKED{{end}}

{{/*
failed_at as RFC 3339 text in UTC, as it is stored (parseTime), whatever
the driver's parseTime and loc settings.
*/}}
{{define "failed_columns"}}id, consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, DATE_FORMAT(failed_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS failed_at{{end}}

{{define "insert_failed"}}INSERT INTO {{.F}} (consumer, message_uuid, topic, partition_key, payload, metadata, status, error, attempts, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE id = id{{end}}

{{/*
Neither database has UPDATE ... RETURNING, and MySQL no DELETE ...
RETURNING (MariaDB has): retry_uuids and discard_uuids select and lock the
rows the change would change, with the arguments of the shared statements,
and mysqlDriver.changedUUIDs then runs retry or discard on them. retry's
new status comes first: the rows not in it yet and in the old one.
*/}}
{{define "retry_uuids"}}SELECT message_uuid FROM {{.F}} WHERE status <> ? AND consumer = ? AND message_uuid IN ? AND status = ? FOR UPDATE{{end}}

{{define "discard_uuids"}}SELECT message_uuid FROM {{.F}} WHERE consumer = ? AND message_uuid IN ? FOR UPDATE{{end}}
