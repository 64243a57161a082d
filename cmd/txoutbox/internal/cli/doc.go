// Package cli is the txoutbox admin command line: [Main] parses the
// arguments, opens the database (PostgreSQL, MySQL/MariaDB or SQLite) and
// runs one of the commands on the outbox table (gormstore.Store) and the
// inbox table (inbox.Inbox):
//
//	migrate [outbox|inbox]...                 create or upgrade the tables
//	status                                    pending, failed, oldest pending age, per topic;
//	                                          inbox failed counts per consumer
//	failed list [--limit N] [--after ID]      parked rows with their last error
//	failed show ID [--payload]                one parked row whole: metadata, payload, whole error
//	failed retry ID... | --all | --topic T    make parked rows pending again
//	failed discard ID... | --all | --topic T  delete parked rows, never publishing them
//	inbox failed list [--consumer NAME]       messages consumers parked (failed, held, retry)
//	     [--limit N] [--after ID]
//	inbox failed show ID [--consumer NAME]    one of them whole
//	inbox failed retry --consumer NAME        mark failed messages for the running consumer
//	     (UUID... | --all)                    to process again (within its redrive poll)
//	inbox failed discard --consumer NAME      delete them from the failed table, never
//	     UUID...                              processing them
//	purge --delivered-before D                delete delivered rows (KeepDelivered)
//	      [--inbox-older-than D] [--dry-run]  and old inbox rows, in batches (or count them)
//	version (or --version)                    the module version, VCS revision, Go version
//
// Output is a table for people, or JSON with --json, one shape per command
// whatever its flags. Exit codes: 0 ok, 1 runtime failure (database
// unreachable, a statement failed), 2 usage error (unknown command, bad
// flag or argument, invalid database URL or table name), 3 an ID or UUID
// given matched nothing (retry and discard change the others). The code lives here rather than in package main so that
// tests run the commands in-process.
package cli
