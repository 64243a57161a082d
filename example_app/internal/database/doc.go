// Package database opens the example app's database from a DATABASE_URL:
// a SQLite file under the data directory by default, a SQLite file given
// as a path, file: or sqlite:// URL (the forms the txoutbox CLI accepts),
// or PostgreSQL. Both the business tables and the outbox live in it, which
// is what makes the outbox transactional.
package database
