#!/usr/bin/env bash
# The official clickhouse-server image's start-up, the part docker-compose.yml
# and the tests use: CLICKHOUSE_USER with CLICKHOUSE_PASSWORD from any host;
# the `default` user kept to this container's loopback unless
# CLICKHOUSE_SKIP_USER_SETUP=1 (as the official image does when no user is
# set up); CLICKHOUSE_DB created once the server answers. Arguments go to
# clickhouse-server after its config file (`-- --name=value` overrides).
set -euo pipefail

users=/etc/clickhouse-server/users.d
user=${CLICKHOUSE_USER:-default}
if [ -n "${CLICKHOUSE_PASSWORD:-}" ] || [ "$user" != default ]; then
    hash=$(printf '%s' "${CLICKHOUSE_PASSWORD:-}" | sha256sum | cut -d' ' -f1)
    # users.xml gives `default` a plain password, to be replaced; a user of
    # its own has none (a `remove` of one it lacks would add an empty one).
    plain=
    [ "$user" = default ] && plain='<password remove="remove"/>'
    cat >"$users/docker-user.xml" <<XML
<yandex><users><$user>
    $plain
    <password_sha256_hex>$hash</password_sha256_hex>
    <networks replace="replace"><ip>::/0</ip></networks>
    <profile>default</profile>
    <quota>default</quota>
</$user></users></yandex>
XML
fi
if [ "${CLICKHOUSE_SKIP_USER_SETUP:-0}" != 1 ] && [ "$user" != default ]; then
    cat >"$users/default-user.xml" <<XML
<yandex><users><default>
    <networks replace="replace"><ip>::1</ip><ip>127.0.0.1</ip></networks>
</default></users></yandex>
XML
fi

clickhouse-server --config-file=/etc/clickhouse-server/config.xml "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
if [ -n "${CLICKHOUSE_DB:-}" ]; then
    until wget -qO /dev/null http://127.0.0.1:8123/ping 2>/dev/null; do
        kill -0 "$server" 2>/dev/null || wait "$server"
        sleep 0.2
    done
    wget -qO /dev/null --auth-no-challenge --user="$user" --password="${CLICKHOUSE_PASSWORD:-}" \
        --post-data="CREATE DATABASE IF NOT EXISTS \`$CLICKHOUSE_DB\`" http://127.0.0.1:8123/
fi
# `wait` returns early when a signal arrives: wait again for the exit.
status=0
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
exit "$status"
