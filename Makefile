# txoutbox developer tasks. `make` runs the tests.
#
#   make test        ensure PostgreSQL, MariaDB, RabbitMQ, NATS and Redis are
#                    up, then run every test with -race, then the chaos tests
#                    (test-chaos)
#   make test-full   like test, plus the long variants: Watermill's Pub/Sub
#                    stress suite on the outbox table (TXOUTBOX_TEST_FULL=1,
#                    about two more minutes)
#   make test-chaos  only the chaos tests (internal/chaos, build tag chaos):
#                    they restart PostgreSQL and MariaDB and stop RabbitMQ,
#                    so they run after the other tests and alone
#   make bench       ensure PostgreSQL, MariaDB and the brokers are up, then
#                    run the benchmarks only
#   make plots       redraw the plots of docs/benchmarks.md (docs/img/*.svg) from
#                    the bench output in bench/results/; needs no database
#   make cover       like test, with a coverage profile and a summary
#   make smoke       the example app's demo (go run ./example_app demo) on
#                    SQLite + GoChannel, then on PostgreSQL with RabbitMQ,
#                    NATS JetStream, Redis Streams and Kafka (an in-process
#                    kfake broker, scripts/with-devkafka.sh), then on MariaDB
#                    with RabbitMQ; .ci/run runs it after make test
#   make lint        gofmt and go vet
#   make tidy-check  fail if go.mod or go.sum are not tidy
#
# The tests use PostgreSQL at TEST_DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable) and
# MariaDB 10.6+ or MySQL 8.0+ at TEST_MYSQL_URL
# (default mysql://root@127.0.0.1:3306/test; each test creates a database of
# its own there). The chaos tests also use RabbitMQ at TEST_AMQP_URL
# (default amqp://guest:guest@127.0.0.1:5672/), and PostgreSQL, MariaDB and
# RabbitMQ must run on this machine for them. The example app's tests and
# make smoke also use NATS JetStream at TEST_NATS_URL (default
# nats://127.0.0.1:4222) and Redis at TEST_REDIS_URL
# (default redis://127.0.0.1:6379/0).

GO          ?= go
PKGS        ?= ./...
# Extra flags for `go test` in test and cover, e.g. TEST_FLAGS='-run TestTransactional -v'.
TEST_FLAGS  ?=
# Extra flags for the benchmarks, e.g. BENCH_FLAGS='-benchtime 1x' or '-benchmem -count 5'.
BENCH_FLAGS ?=
# Extra flags for the chaos tests, e.g. CHAOS_FLAGS=-v.
CHAOS_FLAGS ?=
CHAOS_PKG   := ./internal/chaos/
COVERPROFILE ?= coverage.out

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

.PHONY: test test-full test-chaos bench cover lint tidy-check services services-chaos services-example smoke

services:
	scripts/ensure-services.sh postgres mariadb

services-chaos:
	scripts/ensure-services.sh postgres rabbitmq mariadb

# The broker packages' tests (brokers/...), the example app's tests and make
# smoke use every broker that runs here as a service; Kafka runs in process
# (kfake). The natsjs and redisstream outage tests also start private
# nats-server and redis-server processes of their own.
services-example:
	scripts/ensure-services.sh postgres rabbitmq nats redis

test: services services-chaos services-example
	$(GO) test -race -count=1 $(TEST_FLAGS) $(PKGS)
	$(MAKE) --no-print-directory test-chaos

# test already runs Watermill's universal Pub/Sub suite on the outbox table at
# full size (gormstore TestPubSub, about 15s; TEST_FLAGS=-short shortens it).
# test-full adds TestPubSubStress: that suite ten times at once.
test-full: services services-chaos services-example
	TXOUTBOX_TEST_FULL=1 $(GO) test -race -count=1 $(TEST_FLAGS) $(PKGS)
	$(MAKE) --no-print-directory test-chaos

# One package, one test at a time. The second run is TestBrokerOutageWatermillAMQP,
# built only without -race: watermill-amqp v3.0.2 has a data race in its own
# reconnect code (see internal/chaos/broker_watermill_test.go).
test-chaos: services-chaos
	$(GO) test -race -count=1 -tags chaos -p 1 $(CHAOS_FLAGS) $(CHAOS_PKG)
	$(GO) test -count=1 -tags chaos -p 1 -run '^TestBrokerOutageWatermillAMQP$$' $(CHAOS_FLAGS) $(CHAOS_PKG)

# Orders per demo run of make smoke.
SMOKE_ORDERS ?= 300
SMOKE_DB     ?= $(or $(TEST_DATABASE_URL),postgres://postgres@127.0.0.1:5432/test?sslmode=disable)
SMOKE_MYSQL_DB ?= $(or $(TEST_MYSQL_URL),mysql://root@127.0.0.1:3306/test)
SMOKE_DEMO   := $(GO) run ./example_app demo -n $(SMOKE_ORDERS)

# The demo exits 0 only if every event arrived exactly once in the read model.
smoke: services services-example
	DATABASE_URL= BROKER_URL= $(SMOKE_DEMO)
	DATABASE_URL='$(SMOKE_DB)' BROKER_URL='$(or $(TEST_AMQP_URL),amqp://guest:guest@127.0.0.1:5672/)' $(SMOKE_DEMO)
	DATABASE_URL='$(SMOKE_DB)' BROKER_URL='$(or $(TEST_NATS_URL),nats://127.0.0.1:4222)' $(SMOKE_DEMO)
	DATABASE_URL='$(SMOKE_DB)' BROKER_URL='$(or $(TEST_REDIS_URL),redis://127.0.0.1:6379/0)' $(SMOKE_DEMO)
	DATABASE_URL='$(SMOKE_DB)' scripts/with-devkafka.sh sh -c 'BROKER_URL=kafka://$$DEVKAFKA_ADDR $(SMOKE_DEMO)'
	DATABASE_URL='$(SMOKE_MYSQL_DB)' BROKER_URL='$(or $(TEST_AMQP_URL),amqp://guest:guest@127.0.0.1:5672/)' $(SMOKE_DEMO)
	@echo "smoke: 6 passed, 0 failed"

bench: services services-example
	$(GO) test -run '^$$' -bench . -timeout 60m $(BENCH_FLAGS) $(PKGS)

# The inputs are `go test -bench` output files; docs/benchmarks.md has the
# commands that produce them.
.PHONY: plots
plots:
	$(GO) run ./bench/cmd/benchplot -in bench/results -out docs/img

cover: services
	$(GO) test -race -count=1 -covermode=atomic -coverprofile=$(COVERPROFILE) $(TEST_FLAGS) $(PKGS)
	$(GO) tool cover -func=$(COVERPROFILE) | tail -n 1

lint:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags chaos $(CHAOS_PKG)

tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum
