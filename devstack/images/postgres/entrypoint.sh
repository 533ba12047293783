#!/usr/bin/env bash
# The official postgres image's start-up, the part docker-compose.yml and the
# tests use: at first start a cluster in $PGDATA whose superuser is
# POSTGRES_USER with POSTGRES_PASSWORD, reachable from other hosts with
# POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), and the database
# POSTGRES_DB; then `postgres` with the command's arguments (`-c name=value`).
set -euo pipefail

if [ "${1:-}" != postgres ]; then exec "$@"; fi
shift
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
method=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$method" != trust ]; then
        echo "error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="$method" >/dev/null
    rm -f "$pwfile"
    echo "host all all all $method" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "initialised $PGDATA: superuser $user, database $db, host authentication $method"
fi
exec postgres -D "$PGDATA" "$@"
