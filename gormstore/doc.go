// Package gormstore is the GORM backend of the outbox: the native outbox
// table on PostgreSQL (gorm.io/driver/postgres), MySQL 8.0+ and MariaDB
// 10.6+ (gorm.io/driver/mysql; the DSN needs parseTime=true, and
// interpolateParams=true saves a round trip per statement) and SQLite
// (github.com/glebarez/sqlite, pure Go). New picks the database's driver
// from the GORM dialector.
//
// # The command's transaction
//
// The transactional middleware puts the command's transaction into the
// context; a handler reaches it with outbox.Tx:
//
//	func (h *Handler) PlaceOrder(ctx context.Context, cmd PlaceOrder) error {
//		tx, err := outbox.Tx(ctx)
//		if err != nil {
//			return err
//		}
//		if err := tx.Create(&Order{ID: cmd.ID}).Error; err != nil {
//			return err
//		}
//		return outbox.Emit(ctx, OrderPlaced{ID: cmd.ID})
//	}
//
// # The outbox table
//
// [Store] implements outbox.Store. Its table (default "txoutbox_outbox",
// configurable and optionally schema-qualified on PostgreSQL, or
// database-qualified on MySQL) is created or
// upgraded by [Store.Migrate] or [Migrate]; the same DDL ships as plain SQL
// files under migrations/ (golang-migrate layout) for teams that run their
// own migration tool.
//
// The table name is validated as a plain SQL identifier and always quoted;
// every value is a bound parameter.
//
// # The table as a Watermill Pub/Sub
//
// [Publisher] (a message.Publisher) writes messages into the table, inside
// the command's outbox when called from a transactional handler, and
// [Subscriber] (a message.Subscriber) reads them back with Ack and Nack, so
// a Watermill Router, its middlewares or the stock forwarder can consume
// the table. They pass Watermill's universal Pub/Sub test suite; the
// Features they declare are explained in docs/watermill.md.
//
// # The watermill-sql/v3 backend
//
// [WatermillSQLStore] is a second outbox.Store, for teams that already run
// Watermill's stock components/forwarder: it writes each event as a
// forwarder envelope into a watermill-sql/v3 table, in the command's
// transaction ([SQLTx] unwraps the *sql.Tx behind a GORM transaction).
// docs/watermill.md compares it with the native table.
package gormstore
