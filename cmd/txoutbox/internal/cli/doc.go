// Package cli is the txoutbox admin command line: [Main] parses the
// arguments, opens the database (PostgreSQL or SQLite) and runs one of the
// commands on the outbox table (gormstore.Store) and the inbox table
// (inbox.Inbox):
//
//	migrate [outbox|inbox]...                 create or upgrade the tables
//	status                                    pending, failed, oldest pending age, per topic;
//	                                          inbox failed counts per consumer
//	failed list [--limit N] [--after ID]      parked rows with their last error
//	failed retry ID... | --all                make parked rows pending again
//	failed discard ID...                      delete parked rows, never publishing them
//	inbox failed list [--consumer NAME]       messages consumers parked (failed, held, retry)
//	     [--limit N] [--after ID]
//	inbox failed retry --consumer NAME        mark failed messages for the running consumer
//	     (UUID... | --all)                    to process again (within its redrive poll)
//	inbox failed discard --consumer NAME      delete them from the failed table, never
//	     UUID...                              processing them
//	purge --delivered-before D                delete delivered rows (KeepDelivered)
//	      [--inbox-older-than D]              and old inbox rows, in batches
//
// Output is a table for people, or JSON with --json. Exit codes: 0 ok,
// 1 runtime failure (database unreachable, a statement failed), 2 usage
// error (unknown command, bad flag or argument, invalid database URL or
// table name). The code lives here rather than in package main so that
// tests run the commands in-process.
package cli
