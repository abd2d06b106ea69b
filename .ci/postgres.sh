#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback for the tests.
#
#   .ci/postgres.sh start   install PostgreSQL from the system's packages if missing (Debian/Ubuntu, as root),
#                           create a cluster in $EDGENAS_PG_DIR (default /tmp/edgenas-pg), start it on 127.0.0.1
#                           (port $EDGENAS_PG_PORT, default: the first free port from 5432), create a user with a
#                           random password and a database, and write the URL to $EDGENAS_PG_DIR/url (mode 600;
#                           the password is never printed).
#   .ci/postgres.sh url     print the path of that URL file
#   .ci/postgres.sh stop    stop the server and delete the cluster
#
# Idempotent: `start` on a running cluster leaves it alone; `stop` on a stopped one succeeds.
set -euo pipefail

DIR="${EDGENAS_PG_DIR:-/tmp/edgenas-pg}"
DATA="$DIR/data"
URL_FILE="$DIR/url"
MARKER=".edgenas-pg"  # stop deletes $DIR only if start made it
DB_USER="edgenas"
DB_NAME="edgenas"

log() { echo "postgres.sh: $*" >&2; }

pg_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    return 1
}

install_postgres() {
    if pg_bindir >/dev/null; then return 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "PostgreSQL server binaries not found and cannot install them (need root and apt-get)"; exit 1
    fi
    log "installing PostgreSQL from the system's packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq postgresql >/dev/null 2>&1; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq postgresql >/dev/null
    fi
    pg_bindir >/dev/null || { log "postgresql installed but initdb/pg_ctl not found"; exit 1; }
}

# run a command as the cluster owner (initdb/postgres refuse to run as root)
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    install_postgres
    local bin port pw
    bin="$(pg_bindir)"
    if [ -f "$DATA/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1 && [ -s "$URL_FILE" ]; then
        log "already running ($URL_FILE)"; return 0
    fi
    stop
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    touch "$DIR/$MARKER"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || { log "user 'postgres' missing (the postgresql package creates it)"; exit 1; }
        chown postgres: "$DIR"
    fi
    port="${EDGENAS_PG_PORT:-5432}"
    while port_in_use "$port"; do port=$((port + 1)); done
    as_owner "$bin/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 \
        --no-sync >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    pw="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    as_owner "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U postgres -d postgres >/dev/null <<SQL
CREATE ROLE $DB_USER LOGIN PASSWORD '$pw';
CREATE DATABASE $DB_NAME OWNER $DB_USER;
SQL
    (umask 077; echo "postgresql://$DB_USER:$pw@127.0.0.1:$port/$DB_NAME" >"$URL_FILE.tmp")
    mv "$URL_FILE.tmp" "$URL_FILE"
    log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, database $DB_NAME, user $DB_USER"
}

stop() {
    local bin
    [ -d "$DIR" ] || return 0
    if [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
        log "refusing to delete $DIR: it was not made by postgres.sh"; exit 1
    fi
    if [ -d "$DATA" ] && bin="$(pg_bindir)"; then
        as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) echo "$URL_FILE" ;;
    *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
