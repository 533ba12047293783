#!/usr/bin/env bash
# The compose stack for real, as the quick start runs it (docs/operations.md,
# "Docker Compose"): `up -d` in the repository root, every service healthy,
# the README's row inserted with psql on Postgres found in ClickHouse, then
# `down -v`, after which nothing of the stack is left (containers, network,
# volumes). The images are .env's (scripts/images.sh) or the official ones.
# Ports are compose's defaults (5432, 9092, 8123, 9180) unless one is taken
# here (by scripts/stack.sh's services, say): then free ones, in the log.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_docker
fit_clickhouse_nofile
read -r -a compose <<<"$(compose_command)"
command -v psql >/dev/null || apt_install postgresql-client
command -v curl >/dev/null || apt_install curl
[ -f .env ] || log "no .env: compose pulls the official images (scripts/images.sh builds local ones)"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for setting in POSTGRES_PORT:5432 KAFKA_PORT:9092 CLICKHOUSE_PORT:8123 DASHBOARD_PORT:9180; do
    name=${setting%%:*} port=${!name:-${setting#*:}}
    if port_taken "$port"; then
        port=$(free_port)
        log "127.0.0.1:${setting#*:} is taken here: $name=$port"
    fi
    export "$name=$port"
done
# A project of its own: a stack a user runs from this folder stays as it is.
project=outbox-compose-check
dc() { "${compose[@]}" -p "$project" "$@"; }
leftovers() {
    local label=com.docker.compose.project=$project
    { docker ps -aq --filter "label=$label"; docker volume ls -q --filter "label=$label"
      docker network ls -q --filter "label=$label"; } | wc -l
}
failed() {
    log "the compose stack failed: $*"
    dc ps >&2 || true
    dc logs --tail=30 >&2 || true
    exit 1
}
# However the script ends (a failure, a Ctrl-C), the stack goes.
down_done=
trap '[ -n "$down_done" ] || dc down -v >/dev/null 2>&1 || true' EXIT

started=$SECONDS
log "${compose[*]} up -d (images: $(sed -n 's/^\(POSTGRES\|KAFKA\|CLICKHOUSE\)_IMAGE=//p' .env 2>/dev/null | paste -sd' ' -))"
dc up -d >&2 || failed "up did not start every service"
deadline=$((SECONDS + 240))
while :; do
    states=$(dc ps -q | xargs docker inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}')
    unhealthy=$(grep -v ' healthy$' <<<"$states" || true)
    [ -z "$unhealthy" ] && break
    [ $SECONDS -lt $deadline ] || failed "not healthy within 240 s: $(paste -sd, - <<<"$unhealthy")"
    sleep 2
done
log "every service healthy ($(wc -l <<<"$states") services) $((SECONDS - started)) s after up"

inserted=$SECONDS
PGPASSWORD=${POSTGRES_PASSWORD:-postgres} psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres outbox -c \
    "INSERT INTO user_logins (username, event_type, event_time) VALUES ('alice', 'login', now())" >/dev/null ||
    failed "the insert"
query="SELECT username, event_type FROM outbox.user_logins FINAL ORDER BY id"
deadline=$((SECONDS + 60))
until [ "$(curl -s -u "outbox:${CLICKHOUSE_PASSWORD:-outbox}" "http://127.0.0.1:$CLICKHOUSE_PORT/" --data-binary "$query")" = "$(printf 'alice\tlogin')" ]; do
    [ $SECONDS -lt $deadline ] || failed "the row is not in ClickHouse after 60 s: $(curl -s -u "outbox:${CLICKHOUSE_PASSWORD:-outbox}" "http://127.0.0.1:$CLICKHOUSE_PORT/" --data-binary "$query")"
    sleep 0.2
done
log "the row inserted on 127.0.0.1:$POSTGRES_PORT is in ClickHouse on 127.0.0.1:$CLICKHOUSE_PORT after $((SECONDS - inserted)) s"

dc down -v >&2
down_done=1
left=$(leftovers)
[ "$left" = 0 ] || die "down -v left $left containers, volumes or networks of project $project"
log "down -v removed everything; the compose check took $((SECONDS - started)) s"
