#!/usr/bin/env bash
# Starts a throwaway PostgreSQL (installed, not running on a fresh machine)
# for the test suite and prints its URL. Usage: eval "$(bash .ci/postgres.sh start DIR)";
# bash .ci/postgres.sh stop DIR. fsync is off: this server holds test data only.
set -euo pipefail
cmd=$1 dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "PostgreSQL is not installed (apt install postgresql-15)" >&2; exit 1; }
# A free port from 54330 up (another PostgreSQL may hold the first).
free_port() {
    local p
    for p in $(seq 54330 54400); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    echo "no free port in 54330-54400" >&2; return 1
}
if [ -n "${OUTPOST_CI_PG_PORT:-}" ]; then port=$OUTPOST_CI_PG_PORT
elif [ -f "$dir/port" ]; then port=$(cat "$dir/port")
else port=$(free_port); fi
as_pg() {
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
case "$cmd" in
start)
    mkdir -p "$dir"
    echo "$port" > "$dir/port"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "'$bin/initdb' -D '$dir/data' -A trust -U postgres" >/dev/null
    fi
    as_pg "'$bin/pg_ctl' -D '$dir/data' -w -l '$dir/log' -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=2000 -c shared_buffers=128MB\" start" >&2
    echo "export OUTPOST_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    as_pg "'$bin/pg_ctl' -D '$dir/data' -m fast stop" >&2 || true
    ;;
esac
