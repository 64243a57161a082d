#!/usr/bin/env bash
# Makes sure the services the tests need are up, starting or installing them
# where that is safe, and fails with instructions where it is not.
#
#   scripts/ensure-services.sh postgres mariadb rabbitmq
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
#   then, for the WAL relay (walrelay/): wal_level must be logical, with
#   max_replication_slots and max_wal_senders at least 10. If not, and the
#   server runs here: ALTER SYSTEM sets them, pg_ctlcluster ... restart
#   restarts it once, and the script waits until it answers; a server
#   elsewhere is reported with the statements to run. A second run finds
#   them set and does nothing.
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
# mariadb: MySQL or MariaDB at TEST_MYSQL_URL
# (default mysql://root@127.0.0.1:3306/test), used by the store's MySQL
# tests, the CLI's and the example app's; each test creates a database of
# its own on it, so the user needs the CREATE and DROP privileges.
#   1. reachable                        -> check SELECT @@version: MariaDB
#                                          10.6+ or MySQL 8.0+ (FOR UPDATE
#                                          SKIP LOCKED), else fail; create
#                                          the database if it is missing
#   2. installed here but down          -> /etc/init.d/mariadb start (or
#                                          service mariadb start), wait, as 1;
#                                          a server that runs but listens
#                                          elsewhere is reported, not started
#   3. missing, root on Debian/Ubuntu   -> apt-get install mariadb-server,
#                                          start it, let the URL's user
#                                          connect from 127.0.0.1 and ::1
#                                          with the URL's password, as 1
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

# join_by SEP WORD... prints the words separated by SEP.
join_by() {
	local sep="$1" out="${2:-}" w
	shift 2 || return 0
	for w in "$@"; do out+="$sep$w"; done
	printf '%s' "$out"
}
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

readonly PG_MIN_REPLICATION=10 # max_replication_slots, max_wal_senders

# pg_setting NAME prints the server's value of setting NAME.
pg_setting() { pg_psql "$PG_ADMIN_URL" -c "SHOW $1"; }

# pg_ensure_logical_wal makes the server run with wal_level = logical and
# room for PG_MIN_REPLICATION replication slots and WAL senders, which the
# WAL relay and its tests need: ALTER SYSTEM, then one restart.
pg_ensure_logical_wal() {
	if ! command -v psql >/dev/null; then
		log "psql not found: cannot check wal_level (the WAL relay needs wal_level=logical; install postgresql-client)"
		return 0
	fi
	local level slots senders out sql=() changed=()
	level="$(pg_setting wal_level 2>&1)" || die "cannot read wal_level from PostgreSQL at $PG_HOST:$PG_PORT: $level"
	slots="$(pg_setting max_replication_slots 2>&1)" || die "cannot read max_replication_slots: $slots"
	senders="$(pg_setting max_wal_senders 2>&1)" || die "cannot read max_wal_senders: $senders"
	if [[ "$level" != logical ]]; then
		sql+=("ALTER SYSTEM SET wal_level = logical")
		changed+=("wal_level $level -> logical")
	fi
	if ((slots < PG_MIN_REPLICATION)); then
		sql+=("ALTER SYSTEM SET max_replication_slots = $PG_MIN_REPLICATION")
		changed+=("max_replication_slots $slots -> $PG_MIN_REPLICATION")
	fi
	if ((senders < PG_MIN_REPLICATION)); then
		sql+=("ALTER SYSTEM SET max_wal_senders = $PG_MIN_REPLICATION")
		changed+=("max_wal_senders $senders -> $PG_MIN_REPLICATION")
	fi
	((${#sql[@]} > 0)) || return 0
	local cluster ver name stmt
	if ! pg_is_local || ! cluster="$(pg_cluster)"; then
		die "PostgreSQL at $PG_HOST:$PG_PORT needs $(join_by ', ' "${changed[@]}") for the WAL relay (wal_level=logical); this script restarts only a server on this machine: run $(join_by '; ' "${sql[@]}") as a superuser, then restart PostgreSQL"
	fi
	read -r ver name <<<"$cluster"
	for stmt in "${sql[@]}"; do
		out="$(pg_psql "$PG_ADMIN_URL" -c "$stmt" 2>&1)" ||
			die "cannot run '$stmt' (it needs a superuser; TEST_DATABASE_URL user is $PG_USER): $out"
	done
	pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" restart ||
		die "could not restart PostgreSQL $ver/$name after ALTER SYSTEM; see /var/log/postgresql/postgresql-$ver-$name.log (as non-root: sudo pg_ctlcluster --skip-systemctl-redirect $ver $name restart)"
	pg_wait
	level="$(pg_setting wal_level 2>&1)" || die "cannot read wal_level after the restart: $level"
	[[ "$level" == logical ]] ||
		die "PostgreSQL $ver/$name still runs with wal_level=$level after ALTER SYSTEM and a restart; is wal_level set in a file included after postgresql.auto.conf?"
	log "restarted PostgreSQL $ver/$name once for the WAL relay: $(join_by ', ' "${changed[@]}")"
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
	pg_ensure_logical_wal
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

# ---------------------------------------------------------------- mariadb

readonly DEFAULT_MYSQL_URL='mysql://root@127.0.0.1:3306/test'

# url_decode prints $1 with its %XX escapes decoded.
url_decode() { local s="${1//+/ }"; printf '%b' "${s//%/\\x}"; }

# redact_url hides the password of a URL.
redact_url() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:xxxxx@#' <<<"$1"; }

# parse_mysql_url sets MY_URL, MY_USER, MY_PASS, MY_HOST, MY_PORT and MY_DB
# from TEST_MYSQL_URL.
parse_mysql_url() {
	MY_URL="${TEST_MYSQL_URL:-$DEFAULT_MYSQL_URL}"
	case "$MY_URL" in
	mysql://* | mariadb://*) ;;
	*) die "TEST_MYSQL_URL must be a mysql:// URL, got: $(redact_url "$MY_URL")" ;;
	esac
	local rest="${MY_URL#*://}"
	local authority="${rest%%[/?]*}" tail="${rest#"${rest%%[/?]*}"}"
	local path="${tail%%\?*}" userinfo=""
	[[ "$authority" == *@* ]] && userinfo="${authority%@*}"
	MY_USER="$(url_decode "${userinfo%%:*}")"
	MY_USER="${MY_USER:-root}"
	MY_PASS=""
	[[ "$userinfo" == *:* ]] && MY_PASS="$(url_decode "${userinfo#*:}")"
	parse_host_port "$MY_URL" 3306
	MY_HOST="$HP_HOST" MY_PORT="$HP_PORT"
	MY_DB="${path#/}"
	[[ "$MY_DB" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
		die "database name '$MY_DB' in TEST_MYSQL_URL must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
}

# mysql_client prints the command-line client's name, if there is one.
mysql_client() {
	if command -v mariadb >/dev/null; then
		echo mariadb
	elif command -v mysql >/dev/null; then
		echo mysql
	else
		return 1
	fi
}

# my_sql SQL runs SQL on the server at TEST_MYSQL_URL as its user, over TCP,
# and prints the result without headers.
my_sql() {
	MYSQL_PWD="$MY_PASS" timeout 15 "$MY_CLIENT" --no-defaults --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" \
		-u "$MY_USER" --connect-timeout=3 -N -B -e "$1"
}

mariadb_installed() {
	[[ -x /usr/sbin/mariadbd || -x /usr/sbin/mysqld ]] || command -v mariadbd >/dev/null || command -v mysqld >/dev/null
}

# mariadb_running: a MariaDB or MySQL server process runs on this machine.
mariadb_running() {
	command -v pgrep >/dev/null && { pgrep -x mariadbd >/dev/null || pgrep -x mysqld >/dev/null; }
}

mariadb_start() {
	if [[ -x /etc/init.d/mariadb ]]; then
		log "starting MariaDB (/etc/init.d/mariadb start)"
		# The init script pings the server with /etc/mysql/debian.cnf and
		# reports a failure without it even when the server started:
		# mariadb_wait decides.
		/etc/init.d/mariadb start >/dev/null ||
			log "/etc/init.d/mariadb start reported a failure; waiting for the server (as non-root: sudo /etc/init.d/mariadb start)"
	elif command -v service >/dev/null; then
		log "starting MariaDB (service mariadb start)"
		service mariadb start >/dev/null ||
			log "service mariadb start reported a failure; waiting for the server (as non-root: sudo service mariadb start)"
	else
		mariadb_how_to_install "installed, but neither /etc/init.d/mariadb nor service is here to start it"
	fi
}

# mariadb_wait waits until the server answers a query: the port opens a
# moment before the server takes logins. A refused login also means it is up.
mariadb_wait() {
	local i out
	for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
		if port_open "$MY_HOST" "$MY_PORT"; then
			[[ -z "$MY_CLIENT" ]] && return 0
			out="$(my_sql 'SELECT 1' 2>&1)" && return 0
			[[ "$out" == *"Access denied"* ]] && return 0
		fi
		sleep 0.5
	done
	die "MariaDB at $MY_HOST:$MY_PORT is not accepting connections after ${WAIT_SECONDS}s; see /var/log/mysql/"
}

# mariadb_grant_local lets the URL's user connect over TCP from this
# machine with the URL's password, as the tests do. A fresh Debian install
# lets root in only over the local socket (unix_socket authentication),
# which is how this connects.
mariadb_grant_local() {
	local q="'" qq="''"
	local user="${MY_USER//$q/$qq}" pass="${MY_PASS//$q/$qq}" host sql=""
	log "letting user $MY_USER connect from 127.0.0.1 and ::1"
	for host in 127.0.0.1 ::1; do
		sql+="CREATE USER IF NOT EXISTS '$user'@'$host' IDENTIFIED BY '$pass';"
		sql+="GRANT ALL PRIVILEGES ON *.* TO '$user'@'$host' WITH GRANT OPTION;"
	done
	"$MY_CLIENT" --no-defaults -u root -e "$sql" ||
		die "could not create user $MY_USER on the fresh MariaDB install (as root over the local socket)"
}

# mariadb_check_version fails unless $1 (SELECT @@version) names MariaDB
# 10.6+ or MySQL 8.0+: the store claims rows with FOR UPDATE SKIP LOCKED.
# It sets MY_VERSION.
mariadb_check_version() {
	local v="$1" num major minor rest product=MySQL
	num="${v%%-*}"
	major="${num%%.*}"
	rest="${num#*.}"
	minor="${rest%%.*}"
	[[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] ||
		die "cannot read the server version at $MY_HOST:$MY_PORT from SELECT @@version: '$v'"
	[[ "$v" == *MariaDB* ]] && product=MariaDB
	if { [[ "$product" == MariaDB ]] && ((major < 10 || (major == 10 && minor < 6))); } ||
		{ [[ "$product" == MySQL ]] && ((major < 8)); }; then
		die "$product $num at $MY_HOST:$MY_PORT is too old: the store claims rows with FOR UPDATE SKIP LOCKED, which needs MariaDB 10.6+ or MySQL 8.0+ (upgrade it, or set TEST_MYSQL_URL to a newer server)"
	fi
	MY_VERSION="$product $num"
}

# mariadb_ensure_database creates MY_DB when it is missing.
mariadb_ensure_database() {
	local out
	out="$(my_sql "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '$MY_DB'" 2>&1)" ||
		die "cannot query MariaDB at $MY_HOST:$MY_PORT as $MY_USER: $out"
	[[ "$out" == 1 ]] && return 0
	log "creating database $MY_DB"
	out="$(my_sql "CREATE DATABASE IF NOT EXISTS \`$MY_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" 2>&1)" ||
		die "cannot create database $MY_DB: $out"
}

# mariadb_how_to_install says what to do and fails. $1 says why nothing
# was tried.
mariadb_how_to_install() {
	cat >&2 <<EOT
ensure-services: MariaDB is not reachable at $MY_HOST:$MY_PORT ($1).
Start or install MariaDB 10.6+ (or MySQL 8.0+), then re-run. For example:
  Debian/Ubuntu: sudo apt-get install -y mariadb-server && sudo /etc/init.d/mariadb start
  macOS:         brew install mariadb && brew services start mariadb
  Docker:        docker run -d -p $MY_PORT:3306 -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 -e MARIADB_ROOT_HOST=% -e MARIADB_DATABASE=$MY_DB mariadb:10.11
or set TEST_MYSQL_URL to a server you have (now: $(redact_url "$MY_URL")).
The tests need user $MY_USER to connect over TCP and to create and drop databases.
EOT
	exit 1
}

ensure_mariadb() {
	parse_mysql_url
	MY_CLIENT="$(mysql_client)" || MY_CLIENT=""
	local fresh="" out
	if ! port_open "$MY_HOST" "$MY_PORT"; then
		if ! host_is_local "$MY_HOST"; then
			mariadb_how_to_install "$MY_HOST is not this machine, so this script cannot start it"
		elif mariadb_running; then
			mariadb_how_to_install "a server runs here, but not on $MY_HOST:$MY_PORT; check its port and bind-address in /etc/mysql/"
		elif mariadb_installed; then
			mariadb_start
		elif can_apt_install; then
			apt_install mariadb-server
			fresh=1
			MY_CLIENT="$(mysql_client)" || MY_CLIENT=""
			port_open "$MY_HOST" "$MY_PORT" || mariadb_start
		else
			mariadb_how_to_install "not installed here, and installing it needs root and apt-get (and TXOUTBOX_NO_INSTALL unset)"
		fi
	fi
	mariadb_wait
	if [[ -z "$MY_CLIENT" ]]; then
		log "no mysql or mariadb client: cannot check the server version or that database $MY_DB exists (install mariadb-client)"
		log "mariadb port open at $MY_HOST:$MY_PORT"
		return 0
	fi
	if ! out="$(my_sql 'SELECT @@version' 2>&1)" && [[ -n "$fresh" ]]; then
		mariadb_grant_local
		out="$(my_sql 'SELECT @@version' 2>&1)" || true
	fi
	my_sql 'SELECT 1' >/dev/null 2>&1 ||
		die "MariaDB at $MY_HOST:$MY_PORT is up but refuses user $MY_USER (TEST_MYSQL_URL $(redact_url "$MY_URL")): $out"
	mariadb_check_version "$out"
	mariadb_ensure_database
	log "mariadb ready at $MY_HOST:$MY_PORT ($MY_VERSION), database $MY_DB"
}

# -------------------------------------------------------------------- main

main() {
	(($# > 0)) || die "usage: $0 SERVICE... (services: postgres mariadb rabbitmq nats redis)"
	local svc
	for svc in "$@"; do
		declare -F "ensure_$svc" >/dev/null || die "unknown service '$svc' (known: postgres mariadb rabbitmq nats redis)"
		"ensure_$svc"
	done
}

main "$@"
