#!/usr/bin/env bash
# Runs a command with an in-process Kafka (internal/devkafka, on kfake)
# listening on a free port of 127.0.0.1, and stops it afterwards. The
# command sees the broker's address in DEVKAFKA_ADDR:
#
#   scripts/with-devkafka.sh sh -c 'BROKER_URL=kafka://$DEVKAFKA_ADDR go run ./example_app demo'
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dir="$(mktemp -d)"
pid=""
cleanup() {
	if [[ -n "$pid" ]]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

go build -o "$dir/devkafka" ./internal/devkafka
"$dir/devkafka" -addr 127.0.0.1:0 -partitions 8 >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	grep -q '^devkafka: listening on ' "$dir/log" && break
	kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; echo "with-devkafka: devkafka exited" >&2; exit 1; }
	sleep 0.1
done
addr="$(sed -n 's/^devkafka: listening on //p' "$dir/log")"
[[ -n "$addr" ]] || { cat "$dir/log" >&2; echo "with-devkafka: devkafka did not start within 10s" >&2; exit 1; }
echo "with-devkafka: kafka at $addr"
DEVKAFKA_ADDR="$addr" "$@"
