# The Docker engine and Compose for the image, compose and container checks:
# sourced by lib.sh. Debian's `docker.io` (dockerd, containerd, runc) and
# `docker-compose` (1.29; `docker compose` where the plugin exists) are
# installed where missing; dockerd is started in the background where no
# engine answers (no systemd as PID 1 on a machine of this kind) and keeps
# running for later runs, like the database servers.

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/outbox-relay-dockerd.log}

docker_up() { docker info >/dev/null 2>&1; }

ensure_docker() {
    if docker_up; then return 0; fi
    command -v dockerd >/dev/null || apt_install docker.io
    if ! docker_up; then
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        # Its own session: it outlives this script and its process group.
        as_root setsid -f dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null
        local deadline=$((SECONDS + 60))
        until docker_up; do
            [ $SECONDS -lt $deadline ] || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
            sleep 0.5
        done
    fi
    log "Docker engine $(docker version --format '{{.Server.Version}}') answers"
}

# Prints the Compose command: the `docker compose` plugin where it exists,
# else Debian's docker-compose (installed where missing).
compose_command() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
        return 0
    fi
    command -v docker-compose >/dev/null || apt_install docker-compose
    echo "docker-compose"
}

# What the engine stores: images, containers, volumes, build cache.
docker_disk_use() {
    docker system df --format '{{.Type}}: {{.Size}} ({{.Reclaimable}} reclaimable)' 2>/dev/null |
        paste -sd ';' - | sed 's/;/; /g'
}

# Exports CLICKHOUSE_NOFILE (docker-compose.yml's open-files limit for
# ClickHouse, 262144 unless set) as the engine's own hard limit where that is
# lower: an engine without CAP_SYS_RESOURCE (in a container or sandbox) cannot
# raise it, and the container would not start ("error setting rlimit type 7").
fit_clickhouse_nofile() {
    local wanted=${CLICKHOUSE_NOFILE:-262144} engine
    engine=$(awk '/^Max open files/ {print $5}' "/proc/$(pgrep -xo dockerd)/limits" 2>/dev/null || true)
    [[ "$engine" =~ ^[0-9]+$ ]] || engine=$(ulimit -Hn)
    if [[ "$engine" =~ ^[0-9]+$ ]] && [ "$engine" -lt "$wanted" ]; then
        log "the Docker engine's open-files limit is $engine: CLICKHOUSE_NOFILE=$engine (compose's default: 262144)"
        wanted=$engine
    fi
    export CLICKHOUSE_NOFILE=$wanted
}
