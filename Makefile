# txoutbox developer tasks. `make` runs the tests.
#
#   make test        ensure PostgreSQL is up, then run every test with -race
#   make bench       ensure PostgreSQL is up, then run the benchmarks only
#   make cover       like test, with a coverage profile and a summary
#   make lint        gofmt and go vet
#   make tidy-check  fail if go.mod or go.sum are not tidy
#
# The tests use PostgreSQL at TEST_DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable).

GO          ?= go
PKGS        ?= ./...
# Extra flags for `go test` in test and cover, e.g. TEST_FLAGS='-run TestTransactional -v'.
TEST_FLAGS  ?=
# Extra flags for the benchmarks, e.g. BENCH_FLAGS='-benchtime 1x' or '-benchmem -count 5'.
BENCH_FLAGS ?=
COVERPROFILE ?= coverage.out

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

.PHONY: test bench cover lint tidy-check services

services:
	scripts/ensure-services.sh postgres

test: services
	$(GO) test -race -count=1 $(TEST_FLAGS) $(PKGS)

bench: services
	$(GO) test -run '^$$' -bench . $(BENCH_FLAGS) $(PKGS)

cover: services
	$(GO) test -race -count=1 -covermode=atomic -coverprofile=$(COVERPROFILE) $(TEST_FLAGS) $(PKGS)
	$(GO) tool cover -func=$(COVERPROFILE) | tail -n 1

lint:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

tidy-check:
	$(GO) mod tidy
	git diff --exit-code go.mod go.sum
