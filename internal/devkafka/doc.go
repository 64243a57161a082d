// Command devkafka is a single-broker Kafka for development and for
// `make smoke`: kfake (github.com/twmb/franz-go/pkg/kfake), an in-process
// fake of the Kafka protocol, listening on one address.
//
//	go run ./internal/devkafka -addr 127.0.0.1:9092 -partitions 8
//
// It prints one line, "devkafka: listening on 127.0.0.1:9092", once
// clients can connect, and runs until SIGINT or SIGTERM. Topics are
// created on first use (a metadata request that asks for it, which Sarama
// and the brokers/kafka publisher send) with -partitions partitions;
// -topics creates some at start. The data lives in memory unless
// -data-dir names a directory, from which a restart reloads it.
//
// Flags:
//
//	-addr host:port    address to listen on and to advertise (default 127.0.0.1:9092;
//	                   port 0 picks a free port, printed in the ready line)
//	-partitions N      partitions of every created topic (default 8)
//	-topics a,b        topics to create at start
//	-data-dir DIR      keep the cluster's state in DIR across restarts
//	-log-level LEVEL   kfake's log on stderr: none, error, warn, info, debug (default none)
//
// kfake is not Kafka: use it for development and tests, never for data
// that matters.
package main
