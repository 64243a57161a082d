// Package outboxtest is the conformance suite every [outbox.Store] backend
// must pass, in the style of River's riverdrivertest and Watermill's
// pubsub/tests: a backend's own test calls [Exercise] (the write contract:
// Save) and, for a backend the forwarder relays from, [ExerciseRelay] (the
// relay contract of [outbox.RelayStore]: claims, per-key prefixes, blocked
// rows, topics, release, finish, HasDue, Stats, requeue and discard,
// exclusivity between claims) with a function that builds a fresh,
// isolated backend for each sub-test.
//
// # Usage
//
//	func TestConformance(t *testing.T) {
//		t.Parallel()
//		outboxtest.Exercise(t, func(t *testing.T) outboxtest.Harness {
//			db := testdb.Open(t, testdb.Postgres) // a database of t alone
//			store, err := gormstore.New(db, gormstore.Config{})
//			require.NoError(t, err)
//			require.NoError(t, store.Migrate(context.Background()))
//			return outboxtest.Harness{Store: store, DB: db, Rows: readRows}
//		})
//	}
//
// # Reading rows back
//
// The suite checks what a Store wrote by reading the table back through
// [Harness.Rows], which the backend supplies: the suite knows nothing of a
// backend's table layout, so a backend whose table has other columns (the
// watermill-sql compatibility table, for example) plugs in its own reader.
// Rows returns every row of the backend's table as a [Row], in ascending
// storage order (the identity id for the native table). Fields a backend
// does not store (Attempts, Delivered, Failed) are left zero.
//
// # Known differences
//
// A backend that differs from the native table in a known way declares it
// with a flag of [Harness] (PartitionKeyInMetadata for the watermill-sql
// backend, which has no partition key column) or [RelayHarness]
// (SerialClaims for SQLite, which holds one claim at a time), so the
// difference is stated in its test rather than hidden in its row reader.
// Each flag changes only the checks its comment names; no check is
// skipped.
//
// # Isolation
//
// Exercise calls the harness constructor once per sub-test and runs the
// sub-tests with t.Parallel, so each constructor call must return a
// database no other test writes to (a fresh PostgreSQL schema, a SQLite
// file in t.TempDir()) with the backend's table already created.
package outboxtest
