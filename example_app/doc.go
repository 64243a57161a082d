// Command example_app is an orders service built on txoutbox: the first
// thing to run, and the proof that the parts work together.
//
//	go run ./example_app              # the service on 127.0.0.1:8080
//	go run ./example_app demo -n 1000 # load, wait, check, summary
//	go run ./example_app -h           # flags and environment
//
// Commands (PlaceOrder, PayOrder, CancelOrder) arrive over a JSON HTTP API
// and run on the txoutbox command bus, each in one transaction that also
// writes its event (OrderPlaced, OrderPaid, OrderCancelled) to the outbox.
// The outbox forwarder, woken at every commit, publishes the events to a
// broker; a Watermill router consumes them and projects them into a read
// model through the inbox, so each event changes the read model once.
//
// With no configuration it runs on a SQLite file in the data directory and
// Watermill's in-process GoChannel. DATABASE_URL=postgres://... switches to
// PostgreSQL, DATABASE_URL=mysql://user@host:3306/db to MySQL or MariaDB,
// and DATABASE_URL=./app.db (or file:app.db?params, or
// sqlite:///abs/app.db: the forms the txoutbox CLI takes) to a SQLite file
// of your choice; BROKER_URL switches the broker (amqp://, nats://,
// redis://, kafka://). Every variable has a flag (--database-url, ...),
// which wins; a bad value is reported with the flag's name when it came
// from the flag, the variable's otherwise. Only the construction of the
// Watermill publisher and subscriber changes (internal/broker).
//
// Layout:
//
//	internal/orders     write model, commands, events, business rules
//	internal/readmodel  the projection consumer and the read model
//	internal/httpapi    the HTTP API
//	internal/app        wiring: bus, outbox, forwarder, router, HTTP server
//	internal/broker     BROKER_URL -> Watermill publisher and subscriber
//	internal/database   DATABASE_URL -> *gorm.DB
//	internal/demo       the demo: load, catch-up, exactly-once checks
//	internal/cli        flags, environment, modes, exit codes
package main
