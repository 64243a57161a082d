// Package bench holds the project's end-to-end benchmarks: the relay drain
// rate and the commit-to-publish latency of the txoutbox forwarder, side by
// side with the stock Watermill path they replace (a watermill-sql/v3 table
// relayed by components/forwarder) and with the bare database floor.
//
// The package has no API; everything lives in _test.go files. The
// benchmarks need the PostgreSQL test database (see internal/testdb) and
// fail when it is unreachable. Run them alone on a quiet machine, one
// drain per iteration:
//
//	go test -run '^$' -bench 'BenchmarkRelay|BenchmarkCommitToPublish' \
//	    -benchtime 1x -count 3 -timeout 30m ./bench/
//
// BenchmarkRelay drains a pre-filled backlog (50,000 events of about 200
// bytes on 50 partition keys; 200,000 for native-200k) to a Watermill
// GoChannel and reports events/s for:
//
//	backend=native                   outbox.Forwarder on gormstore (PostgreSQL)
//	backend=watermill-sql-forwarder  components/forwarder over a watermill-sql/v3
//	                                 Subscriber (batch 100, poll 10 ms)
//	backend=floor                    DELETE ... RETURNING in batches of the forwarder's
//	                                 default size (2,000), no publish,
//	                                 synchronous_commit off (as the relay's transactions)
//	backend=floor-sync-commit        the same, each batch waiting for its WAL flush
//	backend=floor-and-sink           the floor, and at the same time as many ready
//	                                 messages published to the GoChannel: the bound of
//	                                 any relay that publishes to it on the machine
//	backend=native-200k              native with 200,000 events
//	backend=native-batch-1000        native with batches of 1,000, the earlier default
//	backend=native-claims            the native store's claims, each finished at once,
//	                                 back to back; nothing decoded or published
//	backend=native-claims-and-sink   those claims, and at the same time as many ready
//	                                 messages published to the GoChannel
//	backend=mysql-native             outbox.Forwarder on gormstore's MySQL/MariaDB store
//	backend=mysql-watermill-sql-forwarder
//	                                 components/forwarder over a watermill-sql/v3
//	                                 Subscriber of DefaultMySQLSchema (batch 100, poll 10 ms)
//	backend=mysql-floor              per batch of 2,000, one transaction that reads the
//	                                 oldest rows (SELECT ... ORDER BY id LIMIT ... FOR
//	                                 UPDATE) and deletes them by ID range; no publish
//	backend=mysql-native-200k        mysql-native with 200,000 events
//
// The MySQL/MariaDB rows need the MySQL test server (testdb.MySQLURL) and
// report mysql-cpu-us/event in place of pg-cpu-us/event.
//
// BenchmarkCommitToPublish dispatches 1,000 commands/s for 10 s through the
// transactional middleware (8 producers, one event each) and reports the
// latency from the commit's return to the GoChannel subscriber (p50-ms,
// p99-ms) and the statements the relay sends while nothing is pending
// (idle-queries/s), counted at the pgx driver.
//
// BenchmarkClaimTopics measures a claim and HasDue of a forwarder that
// relays one topic while another topic has a backlog of 200,000 rows.
//
// BenchmarkSharedBacklog drains one backlog with one and with two
// forwarders into a publisher that takes 50 µs per message.
//
// BenchmarkRelayBroker drains 50,000 events through the forwarder into each
// real broker of this machine (RabbitMQ, NATS JetStream, Redis Streams; Kafka
// on the in-process kfake cluster), through package brokers, timed until a
// consumer on the broker's subscriber has received every event; each
// broker's -floor is a bare loop publishing the same messages through the
// same publisher, with no database:
//
//	go test -run '^$' -bench BenchmarkRelayBroker -benchtime 1x -count 5 ./bench/
//
// BenchmarkInbox consumes 50,000 events from a GoChannel into a projection
// that writes one row per event in the inbox's transaction, with today's
// shape (a Watermill router under inbox.Middleware, one transaction per
// message) and with inbox.Consumer (8 workers, batches of 100).
//
// BenchmarkSink measures the GoChannel sink alone, the ceiling of any relay
// measured with it. The numbers and the machine they were measured on are in
// docs/benchmarks.md.
package bench
