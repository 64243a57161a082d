#!/usr/bin/env bash
# Makes sure the services the tests need are up, starting or installing them
# where that is safe, and fails with instructions where it is not.
#
#   scripts/ensure-services.sh postgres rabbitmq
#
# Each service has a function ensure_<name>; add services the same way.
#
# postgres: PostgreSQL at TEST_DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/test?sslmode=disable).
#   1. reachable                        -> create the database if it is missing
#   2. installed here but down          -> pg_ctlcluster ... start, wait, as 1
#   3. missing, root on Debian/Ubuntu   -> apt-get install postgresql, start it,
#                                          trust local connections of user
#                                          postgres, create the database
#   4. anything else                    -> say what to install, exit 1
#
# rabbitmq: RabbitMQ at TEST_AMQP_URL
# (default amqp://guest:guest@127.0.0.1:5672/), used by the chaos tests
# (make test-chaos), which stop and start it with rabbitmqctl, and by the
# example app's tests and demo.
#   1. the AMQP port answers            -> ok
#   2. installed here but down          -> rabbitmqctl start_app if the node
#                                          runs with its application stopped,
#                                          else rabbitmq-server -detached;
#                                          wait until the port answers
#   3. missing, root on Debian/Ubuntu   -> apt-get install rabbitmq-server,
#                                          then as 2
#   4. anything else                    -> say what to install, exit 1
#
# nats: NATS with JetStream at TEST_NATS_URL (default nats://127.0.0.1:4222),
# used by the example app's tests and demo (example_app/).
#   1. the port answers                 -> ok
#   2. nats-server installed but down   -> start it in the background with
#                                          JetStream (start-stop-daemon ...
#                                          /usr/sbin/nats-server -- -a 127.0.0.1
#                                          -p 4222 -js -sd /var/lib/nats-server),
#                                          wait until the port answers
#   3. missing, root on Debian/Ubuntu   -> apt-get install nats-server, then as 2
#   4. anything else                    -> say what to install, exit 1
#
# redis: Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0), used by
# the example app's tests and demo (Redis Streams).
#   1. the port answers                 -> ok
#   2. redis-server installed but down  -> redis-server --daemonize yes on
#                                          127.0.0.1 without persistence,
#                                          wait until the port answers
#   3. missing, root on Debian/Ubuntu   -> apt-get install redis-server, then as 2
#   4. anything else                    -> say what to install, exit 1
#
# TXOUTBOX_NO_INSTALL=1 turns step 3 off: a missing service is reported with
# what to install, and nothing is installed.
set -euo pipefail

# can_apt_install: root, apt-get, and installing not turned off.
can_apt_install() { [[ "${TXOUTBOX_NO_INSTALL:-}" != 1 && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; }

readonly DEFAULT_DATABASE_URL='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
readonly WAIT_SECONDS=30
readonly DEFAULT_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/'
readonly RABBITMQ_WAIT_SECONDS=90 # RabbitMQ boots slower than PostgreSQL

log() { printf 'ensure-services: %s\n' "$*"; }
die() { printf 'ensure-services: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- postgres

# parse_pg_url sets PG_URL, PG_USER, PG_HOST, PG_PORT, PG_DB and PG_ADMIN_URL
# (the same server, database "postgres") from TEST_DATABASE_URL.
parse_pg_url() {
	PG_URL="${TEST_DATABASE_URL:-$DEFAULT_DATABASE_URL}"
	case "$PG_URL" in
	postgres://* | postgresql://*) ;;
	*) die "TEST_DATABASE_URL must be a postgres:// URL, got: $PG_URL" ;;
	esac
	local scheme="${PG_URL%%://*}" rest="${PG_URL#*://}"
	local authority="${rest%%[/?]*}" tail="${rest#"${rest%%[/?]*}"}"
	local path="${tail%%\?*}" query=""
	[[ "$tail" == *\?* ]] && query="?${tail#*\?}"
	local userinfo="" hostport="$authority"
	if [[ "$authority" == *@* ]]; then
		userinfo="${authority%@*}"
		hostport="${authority##*@}"
	fi
	PG_USER="${userinfo%%:*}"
	PG_USER="${PG_USER:-${PGUSER:-$(id -un)}}"
	PG_HOST="$hostport" PG_PORT=5432
	if [[ "$hostport" == *:* ]]; then
		PG_HOST="${hostport%:*}"
		PG_PORT="${hostport##*:}"
	fi
	PG_HOST="${PG_HOST:-127.0.0.1}"
	PG_DB="${path#/}"
	PG_DB="${PG_DB:-$PG_USER}"
	[[ "$PG_DB" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
		die "database name '$PG_DB' in TEST_DATABASE_URL must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
	PG_ADMIN_URL="$scheme://$authority/postgres$query"
}

pg_is_local() {
	case "$PG_HOST" in
	127.0.0.1 | localhost | ::1 | '[::1]') return 0 ;;
	esac
	return 1
}

# pg_state prints "up", "starting" or "down".
pg_state() {
	if ! command -v pg_isready >/dev/null; then
		# Without pg_isready an open port is the best check there is.
		# shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
		if timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$PG_HOST" "$PG_PORT" 2>/dev/null; then
			echo up
		else
			echo down
		fi
		return 0
	fi
	local rc=0
	pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 || rc=$?
	case "$rc" in
	0) echo up ;;
	1) echo starting ;;
	*) echo down ;;
	esac
}

pg_wait() {
	local i
	for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
		[[ "$(pg_state)" == up ]] && return 0
		sleep 0.5
	done
	die "PostgreSQL at $PG_HOST:$PG_PORT is not accepting connections after ${WAIT_SECONDS}s"
}

# pg_cluster prints "VERSION NAME" of the local cluster to start: the one
# configured for PG_PORT, else the newest version's "main".
pg_cluster() {
	local ver name port rest
	if command -v pg_lsclusters >/dev/null; then
		while read -r ver name port rest; do
			if [[ "$port" == "$PG_PORT" ]]; then
				echo "$ver $name"
				return 0
			fi
		done < <(pg_lsclusters -h 2>/dev/null)
	fi
	local dir
	ver=""
	for dir in /etc/postgresql/*/main; do
		[[ -d "$dir" ]] || continue
		dir="${dir%/main}"
		ver="$(printf '%s\n' "$ver" "${dir##*/}" | sort -V | tail -n 1)"
	done
	[[ -n "$ver" ]] || return 1
	echo "$ver main"
}

pg_cluster_start() {
	local ver="$1" name="$2" rc=0
	pg_ctlcluster "$ver" "$name" status >/dev/null 2>&1 || rc=$?
	if ((rc == 0)); then
		return 0 # already running (the install may have started it)
	fi
	log "starting PostgreSQL $ver/$name"
	pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start ||
		die "could not start PostgreSQL $ver/$name; see /var/log/postgresql/postgresql-$ver-$name.log (as non-root: sudo pg_ctlcluster --skip-systemctl-redirect $ver $name start)"
}

pg_install() {
	log "PostgreSQL is not installed; installing it from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq postgresql >/dev/null
	local cluster ver name
	cluster="$(pg_cluster)" || die "apt-get installed postgresql but no cluster exists (try: pg_createcluster --start 15 main)"
	read -r ver name <<<"$cluster"
	pg_cluster_start "$ver" "$name"
	pg_trust_local "$ver" "$name"
}

# pg_trust_local lets user postgres connect without a password over the local
# socket and from 127.0.0.1: the first matching pg_hba.conf line wins, so the
# lines go on top.
pg_trust_local() {
	local ver="$1" name="$2"
	local hba="/etc/postgresql/$ver/$name/pg_hba.conf"
	local marker='# txoutbox scripts/ensure-services.sh: trust local test connections'
	[[ -f "$hba" ]] || die "no $hba"
	if ! grep -qxF "$marker" "$hba"; then
		log "trusting local connections of user postgres in $hba"
		{
			echo "$marker"
			echo 'local   all   postgres                  trust'
			echo 'host    all   postgres   127.0.0.1/32   trust'
			echo
			cat "$hba"
		} >"$hba.new"
		chown --reference="$hba" "$hba.new"
		chmod --reference="$hba" "$hba.new"
		mv "$hba.new" "$hba"
		pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload
	fi
}

pg_psql() { PGCONNECT_TIMEOUT=5 psql -X -A -t -q -v ON_ERROR_STOP=1 "$@"; }

# pg_ensure_database creates PG_DB when the server is up but it is missing.
pg_ensure_database() {
	if ! command -v psql >/dev/null; then
		log "psql not found: cannot check that database $PG_DB exists (install postgresql-client)"
		return 0
	fi
	local out
	if out="$(pg_psql "$PG_URL" -c 'SELECT 1' 2>&1)"; then
		return 0
	fi
	local exists
	exists="$(pg_psql "$PG_ADMIN_URL" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" 2>&1)" ||
		die "cannot connect to PostgreSQL at $PG_HOST:$PG_PORT as $PG_USER: $exists"
	if [[ "$exists" == 1 ]]; then
		die "database $PG_DB exists but connecting to it failed: $out"
	fi
	log "creating database $PG_DB"
	if ! out="$(pg_psql "$PG_ADMIN_URL" -c "CREATE DATABASE \"$PG_DB\"" 2>&1)"; then
		# Another run may have created it meanwhile.
		pg_psql "$PG_URL" -c 'SELECT 1' >/dev/null 2>&1 || die "cannot create database $PG_DB: $out"
	fi
}

# pg_how_to_install says what to do and fails. $1 says why nothing was tried.
pg_how_to_install() {
	cat >&2 <<EOF
ensure-services: PostgreSQL is not reachable at $PG_HOST:$PG_PORT ($1).
Start or install PostgreSQL 15+, then re-run. For example:
  Debian/Ubuntu: sudo apt-get install -y postgresql && sudo pg_ctlcluster --skip-systemctl-redirect 15 main start
  macOS:         brew install postgresql@15 && brew services start postgresql@15
  Docker:        docker run -d -p $PG_PORT:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=$PG_DB postgres:15
or set TEST_DATABASE_URL to a server you have (now: $PG_URL).
The tests need user $PG_USER to connect to database $PG_DB without a password prompt.
EOF
	exit 1
}

ensure_postgres() {
	parse_pg_url
	local state cluster ver name
	state="$(pg_state)"
	if [[ "$state" == down ]]; then
		if ! pg_is_local; then
			pg_how_to_install "$PG_HOST is not this machine, so this script cannot start it"
		elif cluster="$(pg_cluster)"; then
			read -r ver name <<<"$cluster"
			pg_cluster_start "$ver" "$name"
		elif can_apt_install; then
			pg_install
		else
			pg_how_to_install "not installed here, and installing it needs root and apt-get (and TXOUTBOX_NO_INSTALL unset)"
		fi
	fi
	pg_wait
	pg_ensure_database
	log "postgres ready at $PG_HOST:$PG_PORT, database $PG_DB"
}

# ---------------------------------------------------------------- rabbitmq

# parse_amqp_url sets AMQP_URL, AMQP_HOST and AMQP_PORT from TEST_AMQP_URL.
parse_amqp_url() {
	AMQP_URL="${TEST_AMQP_URL:-$DEFAULT_AMQP_URL}"
	case "$AMQP_URL" in
	amqp://*) ;;
	*) die "TEST_AMQP_URL must be an amqp:// URL, got: $AMQP_URL" ;;
	esac
	local rest="${AMQP_URL#*://}"
	local authority="${rest%%[/?]*}"
	local hostport="${authority##*@}"
	AMQP_HOST="$hostport" AMQP_PORT=5672
	if [[ "$hostport" == *:* ]]; then
		AMQP_HOST="${hostport%:*}"
		AMQP_PORT="${hostport##*:}"
	fi
	AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
}

amqp_is_local() {
	case "$AMQP_HOST" in
	127.0.0.1 | localhost | ::1 | '[::1]') return 0 ;;
	esac
	return 1
}

amqp_port_open() {
	# shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$AMQP_HOST" "$AMQP_PORT" 2>/dev/null
}

# rabbitmq_wait waits until the AMQP port answers. rabbitmqctl await_startup
# waits for a booting node but fails at once while the node is not yet
# registered, so it is retried; the open port is what the tests need.
rabbitmq_wait() {
	local deadline=$((SECONDS + RABBITMQ_WAIT_SECONDS))
	while ((SECONDS < deadline)); do
		amqp_port_open && return 0
		timeout 10 rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 || sleep 1
	done
	amqp_port_open ||
		die "RabbitMQ at $AMQP_HOST:$AMQP_PORT is not accepting connections after ${RABBITMQ_WAIT_SECONDS}s; see /var/log/rabbitmq/"
}

rabbitmq_start() {
	if timeout 30 rabbitmqctl -q ping >/dev/null 2>&1; then
		# The node runs, its application is stopped (rabbitmqctl stop_app).
		log "starting the RabbitMQ application (rabbitmqctl start_app)"
		timeout 120 rabbitmqctl -q start_app ||
			die "rabbitmqctl start_app failed; see /var/log/rabbitmq/"
	else
		log "starting RabbitMQ (rabbitmq-server -detached)"
		rabbitmq-server -detached ||
			die "could not start RabbitMQ; see /var/log/rabbitmq/ (as non-root: sudo rabbitmq-server -detached)"
	fi
}

rabbitmq_install() {
	log "RabbitMQ is not installed; installing it from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq rabbitmq-server >/dev/null
}

# rabbitmq_how_to_install says what to do and fails. $1 says why nothing
# was tried.
rabbitmq_how_to_install() {
	cat >&2 <<EOF
ensure-services: RabbitMQ is not reachable at $AMQP_HOST:$AMQP_PORT ($1).
Start or install RabbitMQ 3.8+, then re-run. For example:
  Debian/Ubuntu: sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached
  macOS:         brew install rabbitmq && brew services start rabbitmq
The chaos tests (make test-chaos) stop and start it with rabbitmqctl, so it
must run on this machine, and TEST_AMQP_URL (now: $AMQP_URL) must point at
it with a user that may declare queues (guest/guest works from 127.0.0.1).
EOF
	exit 1
}

ensure_rabbitmq() {
	parse_amqp_url
	if ! amqp_port_open; then
		if ! amqp_is_local; then
			rabbitmq_how_to_install "$AMQP_HOST is not this machine, so this script cannot start it"
		elif command -v rabbitmq-server >/dev/null && command -v rabbitmqctl >/dev/null; then
			rabbitmq_start
		elif can_apt_install; then
			rabbitmq_install
			# The package's install script may have started it already.
			amqp_port_open || rabbitmq_start
		else
			rabbitmq_how_to_install "not installed here, and installing it needs root and apt-get (and TXOUTBOX_NO_INSTALL unset)"
		fi
		rabbitmq_wait
	fi
	log "rabbitmq ready at $AMQP_HOST:$AMQP_PORT"
}

# ------------------------------------------------------- nats, redis: common

readonly DEFAULT_NATS_URL='nats://127.0.0.1:4222'
readonly DEFAULT_REDIS_URL='redis://127.0.0.1:6379/0'
readonly BROKER_WAIT_SECONDS=30

# parse_host_port URL DEFAULT_PORT sets HP_HOST and HP_PORT from URL
# (scheme://[user[:pass]@]host[:port][/...], host may be [IPv6]).
parse_host_port() {
	local rest="${1#*://}" default_port="$2"
	local authority="${rest%%[/?]*}"
	local hostport="${authority##*@}"
	HP_HOST="$hostport" HP_PORT="$default_port"
	if [[ "$hostport" == \[*\]:* || ("$hostport" != \[* && "$hostport" == *:*) ]]; then
		HP_HOST="${hostport%:*}"
		HP_PORT="${hostport##*:}"
	fi
	HP_HOST="${HP_HOST#[}"
	HP_HOST="${HP_HOST%]}"
	HP_HOST="${HP_HOST:-127.0.0.1}"
}

host_is_local() {
	case "$1" in
	127.0.0.1 | localhost | ::1) return 0 ;;
	esac
	return 1
}

port_open() {
	# shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_port NAME HOST PORT LOGFILE waits until HOST:PORT answers.
wait_port() {
	local name="$1" host="$2" port="$3" logfile="$4" i
	for ((i = 0; i < BROKER_WAIT_SECONDS * 2; i++)); do
		port_open "$host" "$port" && return 0
		sleep 0.5
	done
	die "$name at $host:$port is not accepting connections after ${BROKER_WAIT_SECONDS}s; see $logfile"
}


apt_install() {
	log "$1 is not installed; installing it from Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "$1" >/dev/null
}

# ------------------------------------------------------------------- nats

nats_start() {
	log "starting nats-server with JetStream on 127.0.0.1:$NATS_PORT"
	mkdir -p /var/lib/nats-server
	# The pid file makes start-stop-daemon look for this instance, not for
	# any nats-server (one may serve another port).
	start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server \
		--make-pidfile --pidfile "/run/txoutbox-nats-server-$NATS_PORT.pid" -- \
		-a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log ||
		die "could not start nats-server; see /var/log/nats-server.log (as non-root: sudo start-stop-daemon --start --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p $NATS_PORT -js -sd /var/lib/nats-server -l /var/log/nats-server.log)"
}

nats_how_to_install() {
	cat >&2 <<EOF
ensure-services: NATS is not reachable at $NATS_HOST:$NATS_PORT ($1).
Start or install nats-server 2.2+ with JetStream (-js), then re-run. For example:
  Debian/Ubuntu: sudo apt-get install -y nats-server && sudo start-stop-daemon --start --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p $NATS_PORT -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  macOS:         brew install nats-server && nats-server -js &
  Docker:        docker run -d -p $NATS_PORT:4222 nats -js
or set TEST_NATS_URL to a server you have (now: $NATS_URL).
EOF
	exit 1
}

ensure_nats() {
	NATS_URL="${TEST_NATS_URL:-$DEFAULT_NATS_URL}"
	case "$NATS_URL" in
	nats://*) ;;
	*) die "TEST_NATS_URL must be a nats:// URL, got: $NATS_URL" ;;
	esac
	parse_host_port "$NATS_URL" 4222
	NATS_HOST="$HP_HOST" NATS_PORT="$HP_PORT"
	if ! port_open "$NATS_HOST" "$NATS_PORT"; then
		if ! host_is_local "$NATS_HOST"; then
			nats_how_to_install "$NATS_HOST is not this machine, so this script cannot start it"
		elif [[ -x /usr/sbin/nats-server ]] && command -v start-stop-daemon >/dev/null; then
			nats_start
		elif can_apt_install; then
			apt_install nats-server
			port_open "$NATS_HOST" "$NATS_PORT" || nats_start
		elif command -v nats-server >/dev/null; then
			nats_how_to_install "nats-server is at $(command -v nats-server), not /usr/sbin/nats-server, or start-stop-daemon is missing, so start it yourself"
		else
			nats_how_to_install "not installed here, and installing it needs root and apt-get (and TXOUTBOX_NO_INSTALL unset)"
		fi
		wait_port NATS "$NATS_HOST" "$NATS_PORT" /var/log/nats-server.log
	fi
	log "nats ready at $NATS_HOST:$NATS_PORT"
}

# ------------------------------------------------------------------ redis

redis_start() {
	log "starting redis-server on 127.0.0.1:$REDIS_PORT"
	mkdir -p /var/lib/redis /var/log/redis
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null ||
		die "could not start redis-server; see /var/log/redis/ci.log"
}

redis_how_to_install() {
	cat >&2 <<EOF
ensure-services: Redis is not reachable at $REDIS_HOST:$REDIS_PORT ($1).
Start or install Redis 6.2+, then re-run. For example:
  Debian/Ubuntu: sudo apt-get install -y redis-server && sudo redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  macOS:         brew install redis && brew services start redis
  Docker:        docker run -d -p $REDIS_PORT:6379 redis
or set TEST_REDIS_URL to a server you have (now: $REDIS_URL).
EOF
	exit 1
}

ensure_redis() {
	REDIS_URL="${TEST_REDIS_URL:-$DEFAULT_REDIS_URL}"
	case "$REDIS_URL" in
	redis://* | rediss://*) ;;
	*) die "TEST_REDIS_URL must be a redis:// URL, got: $REDIS_URL" ;;
	esac
	parse_host_port "$REDIS_URL" 6379
	REDIS_HOST="$HP_HOST" REDIS_PORT="$HP_PORT"
	if ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
		if ! host_is_local "$REDIS_HOST"; then
			redis_how_to_install "$REDIS_HOST is not this machine, so this script cannot start it"
		elif command -v redis-server >/dev/null; then
			redis_start
		elif can_apt_install; then
			apt_install redis-server
			port_open "$REDIS_HOST" "$REDIS_PORT" || redis_start
		else
			redis_how_to_install "not installed here, and installing it needs root and apt-get (and TXOUTBOX_NO_INSTALL unset)"
		fi
		wait_port Redis "$REDIS_HOST" "$REDIS_PORT" /var/log/redis/ci.log
	fi
	log "redis ready at $REDIS_HOST:$REDIS_PORT"
}

# -------------------------------------------------------------------- main

main() {
	(($# > 0)) || die "usage: $0 SERVICE... (services: postgres rabbitmq nats redis)"
	local svc
	for svc in "$@"; do
		declare -F "ensure_$svc" >/dev/null || die "unknown service '$svc' (known: postgres rabbitmq nats redis)"
		"ensure_$svc"
	done
}

main "$@"
