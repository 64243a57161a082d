// Package chaos holds the failure tests of the forwarder and of the inbox
// consumer: tests that break the services everything else depends on, or
// kill the process, and check that nothing is lost or applied twice and
// that everything recovers by itself.
//
//   - TestSIGKILLForwarder: a forwarder in a subprocess is killed with
//     SIGKILL in the middle of batches and restarted, several times. Every
//     event is delivered at least once, duplicates stay within one batch per
//     kill, and per partition key the first deliveries keep the commit order.
//   - TestSIGKILLForwarderMariaDB: the same on MariaDB, where the killed
//     process's claims hold user locks (GET_LOCK) that the server must
//     release when its connections die. Its kills are timed to land between
//     a batch's publish and its finish, so most make a redelivery.
//   - TestSIGKILLConsumer: an inbox.Consumer in a subprocess drains a
//     RabbitMQ queue and is killed with SIGKILL five times, once by itself
//     right after a batch commit and four times by the test at random
//     moments, then restarted. Every message is applied exactly once, each
//     key's in order, and the redeliveries of messages committed but not
//     acked are counted as duplicates.
//   - TestPostgresRestart: the local PostgreSQL cluster is restarted
//     (pg_ctlcluster ... restart) while a forwarder drains a backlog and
//     producers commit through the middleware. The forwarder reconnects
//     without being restarted, every committed event is published, and its
//     LISTEN connection comes back (a commit is relayed without a poll).
//   - TestMariaDBRestart: the local MariaDB is restarted (SHUTDOWN, then
//     started again) while a forwarder drains a backlog and producers commit
//     through the middleware, with the same checks. MySQL has no LISTEN: a
//     second forwarder that only polls must relay a commit made after the
//     restart within its poll interval.
//   - TestSIGKILLWALRelay: a WAL relay (package walrelay) in a subprocess
//     is killed with SIGKILL in the middle of the stream and restarted,
//     five times, while producers commit through the middleware on a
//     store in WAL mode. Every committed event is delivered, per key the
//     first deliveries keep the commit order, each subprocess confirms
//     progress before its kill, and the next one streams only
//     transactions that ended past the slot's confirmed position: the
//     duplicates are what was published and not yet confirmed.
//   - TestWALRelayStandbyTakesOverAfterSIGKILL: two WAL relay
//     subprocesses on one slot; only one streams (pg_stat_replication,
//     and every delivery of one comes before every delivery of the
//     other). The reader is killed with SIGKILL and the standby must
//     stream within 15 s; nothing is lost.
//   - TestWALRelayPostgresRestart: the local PostgreSQL cluster is
//     restarted while a WAL relay streams a backlog and producers commit
//     in WAL mode, retrying. The relay reconnects by itself, Run returns
//     no error, every committed event is published, and only events first
//     published before the restart are published again.
//   - TestListenerReconnectsAfterRepeatedDrops: the forwarder's LISTEN
//     connection is killed again and again (pg_terminate_backend); each time
//     it must come back promptly, not after an ever longer backoff.
//   - TestBrokerOutage: the local RabbitMQ is stopped (rabbitmqctl stop_app)
//     for five seconds while events are committed and started again. The
//     forwarder backs off instead of looping (batches and Publish calls
//     counted through OnBatch and the publisher), logs little, resumes by
//     itself, and every committed event reaches the test's own queue. It
//     publishes with a plain amqp091-go publisher with confirms.
//   - TestBrokerOutageWatermillAMQP: the same with watermill-amqp/v3's
//     publisher. It is built only without the race detector, because
//     watermill-amqp v3.0.2 has a data race in its reconnect code that -race
//     reports at every outage (see broker_watermill_test.go).
//
// These tests restart PostgreSQL and MariaDB and stop RabbitMQ for everyone
// on the machine, so they must never run next to other tests. Their files
// carry the build tag "chaos": a plain `go test ./...` does not compile
// them, and `make test` runs them after the other tests, alone and one at a
// time:
//
//	make test-chaos
//	# or, by hand, with the services up (scripts/ensure-services.sh postgres rabbitmq mariadb):
//	go test -race -count=1 -tags chaos -p 1 ./internal/chaos/
//	go test -count=1 -tags chaos -p 1 -run '^TestBrokerOutageWatermillAMQP$' ./internal/chaos/
//
// They need, on this machine and as root (or a user allowed to run these
// commands): PostgreSQL at TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable), managed with
// pg_ctlcluster; RabbitMQ at TEST_AMQP_URL (default
// amqp://guest:guest@127.0.0.1:5672/), managed with rabbitmqctl; MariaDB
// at TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/test; each test
// creates a database of its own), stopped with the SQL statement SHUTDOWN
// and started with /etc/init.d/mariadb, or by running mariadbd where that
// script cannot check the server (no /etc/mysql/debian.cnf). Each
// test restores the service it disrupts, also when it fails. They take a
// few minutes. TestSIGKILLForwarder and TestSIGKILLForwarderMariaDB run
// their forwarder in a subprocess: the test binary started again with
// TXOUTBOX_CHAOS_CHILD set (see TestMain), and TXOUTBOX_CHAOS_DIALECT=mysql
// on MariaDB. The WAL tests need wal_level=logical (scripts/ensure-services.sh
// postgres sets it), a free replication slot and two walsenders; each
// creates a slot and publication of its own and drops them.
package chaos
