#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a systemd boot:
# - docker-compose.yml with `docker-compose config` (Debian's docker-compose
#   1.29; the compose plugin is not packaged here);
# - the systemd units with `systemd-analyze verify`, pointed at this
#   checkout's binaries (it checks that ExecStart is executable) and the
#   example environment files. verify exits 0 on unknown keys or bad values
#   and only prints them, so any line it prints about our units fails.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
command -v docker-compose >/dev/null || apt_install docker-compose
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile generator config -q
# Published ports bind to loopback unless BIND_ADDRESS says otherwise.
open_ports=$(docker-compose -f docker-compose.yml --profile generator config |
    awk '/^ *ports:/ {p=1; next} p && /^ *- / {print; next} {p=0}' | grep -v -- '- 127\.0\.0\.1:' || true)
if [ -n "$open_ports" ]; then
    echo "docker-compose.yml publishes ports beyond 127.0.0.1 by default:" >&2
    echo "$open_ports" >&2
    exit 1
fi
log "docker-compose.yml is valid; its ports bind to 127.0.0.1"

command -v systemd-analyze >/dev/null || apt_install systemd
profile=${CHECK_PROFILE:-debug}
if [ ! -x "target/$profile/relay" ]; then
    ensure_build_deps
    if [ "$profile" = release ]; then
        cargo build --release --bins --quiet
    else
        cargo build --workspace --bins --quiet  # as scripts/test.sh does
    fi
fi
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
for unit in deploy/systemd/*.service; do
    sed -e "s#/usr/local/bin/#$ROOT/target/$profile/#g" \
        -e "s#EnvironmentFile=/etc/outbox-relay/\(.*\)\.env#EnvironmentFile=$ROOT/deploy/systemd/\1.env.example#" \
        "$unit" >"$units/$(basename "$unit")"
done
report=$(systemd-analyze verify "$units"/*.service 2>&1 || echo "systemd-analyze verify failed")
if printf '%s\n' "$report" | grep -E "outbox-|failed" ; then
    die "systemd units have problems (above)"
fi
log "systemd units are valid ($(ls deploy/systemd/*.service | wc -l) units)"
