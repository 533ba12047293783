#!/usr/bin/env bash
# Builds the images docker-compose.yml, the tests' testcontainers backend and
# the systemd checks run, on a machine that reaches no image registry:
#
#   outbox-local/debian:bookworm          debootstrap --variant=minbase, imported
#   outbox-local/postgres:15              Debian's PostgreSQL  } with the official
#   outbox-local/clickhouse-server:18.16  Debian's ClickHouse  } images' interface
#   outbox-local/kafka:<version>          Maven Central's jars } (devstack/images/)
#   outbox-local/systemd:bookworm         Debian's systemd as PID 1
#   outbox-relay:latest, outbox-relay-demo:latest
#                                         the Dockerfile's `product` and `demo`
#                                         stages, with release binaries built here
#
# and writes their names to .env (a block of its own; other lines are kept),
# where docker-compose reads them and so do the tests. Without that block the
# official images are used (postgres:16, apache/kafka, clickhouse-server).
#
# Installs and starts the Docker engine where missing. Idempotent: an image
# whose inputs (its folder, its base image, the jars or binaries) have not
# changed is kept (a label records them), so a second run takes seconds.
# Dangling images it leaves are pruned.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PREFIX=${IMAGE_PREFIX:-outbox-local}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=$ROOT/target/images
ENV_FILE=$ROOT/.env
LABEL=org.outbox-relay.inputs

ensure_docker
started_all=$SECONDS

digest() { sha256sum | cut -c1-20; }
# A folder's files, names and contents, as one digest.
folder_digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | digest; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }
recorded_inputs() { docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# build NAME INPUTS CONTEXT [docker build arguments…]: builds unless NAME
# exists with the same INPUTS.
build() {
    local name=$1 inputs=$2 context=$3
    shift 3
    if [ "$(recorded_inputs "$name")" = "$inputs" ]; then
        log "$name: up to date"
        return 0
    fi
    log "building $name"
    local started=$SECONDS build_log=$WORK/build-${name//[\/:]/-}.log
    docker build --label "$LABEL=$inputs" --tag "$name" "$@" "$context" >"$build_log" 2>&1 ||
        die "building $name failed; see $build_log"
    log "$name built in $((SECONDS - started)) s"
}

# The base: Debian's minimal system from its mirror, imported as an image.
BASE=$PREFIX/debian:$SUITE
base_image() {
    local inputs
    inputs=$(printf 'minbase %s %s 1' "$SUITE" "$MIRROR" | digest)
    if [ "$(recorded_inputs "$BASE")" = "$inputs" ]; then
        log "$BASE: up to date"
        return 0
    fi
    apt_install debootstrap
    local root=$WORK/rootfs started=$SECONDS
    as_root rm -rf "$root"
    log "debootstrap --variant=minbase $SUITE from $MIRROR"
    as_root debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $WORK/debootstrap.log"
    as_root tee "$root/etc/apt/sources.list" >/dev/null <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SOURCES
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' |
        as_root tee "$root/etc/apt/apt.conf.d/90outbox-relay" >/dev/null
    as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    as_root tar -C "$root" -c . |
        docker import --change "LABEL $LABEL=$inputs" --change 'CMD ["bash"]' - "$BASE" >/dev/null
    as_root rm -rf "$root"
    log "$BASE made in $((SECONDS - started)) s"
}

# FROM the base: inputs are the folder and the base image's id.
local_image() {
    local name=$1 folder=$2 context=${3:-$2} extra=${4:-}
    build "$name" "$( (folder_digest "$folder"; image_id "$BASE"; echo "$extra") | digest)" \
        "$context" --build-arg BASE="$BASE"
}

# Kafka: the broker's jars (kafka-lib.sh's cache) and the tools' (the health
# check), fetched once with Maven.
kafka_context() {
    kafka_jars
    local tools=$KAFKA_CACHE/tools
    if [ ! -f "$tools/.complete" ]; then
        command -v mvn >/dev/null || apt_install maven >&2
        log "fetching the Kafka $KAFKA_VERSION tools with Maven into $tools"
        rm -rf "$tools"
        mvn -q -B -f "$ROOT/devstack/kafka/tools/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tools/libs" >&2 ||
            die "Maven could not fetch org.apache.kafka:kafka-tools:$KAFKA_VERSION"
        touch "$tools/.complete"
    fi
    local context=$WORK/kafka
    rm -rf "$context"
    mkdir -p "$context/libs"
    cp devstack/images/kafka/* "$context/"
    cp "$KAFKA_CACHE"/libs/*.jar "$context/libs/"
    cp -n "$tools"/libs/*.jar "$context/libs/"
    echo "$context"
}

# The product: release binaries built here (the build scripts/release-check.sh
# makes; nothing to do when it ran), stripped, in an image of their own; then
# the Dockerfile's runtime stages — its lines from `FROM build AS binaries`
# on, verbatim — with that image as `binaries` (no Rust toolchain can be
# fetched in a container here).
BINARIES=$PREFIX/outbox-relay-binaries:latest
product_images() {
    ensure_build_deps
    log "release binaries (cargo build --release --locked --bins)"
    cargo build --release --locked --bins --quiet
    local bins=(relay sink stage outbox-demo) inputs
    inputs=$( (cd target/release && sha256sum "${bins[@]}") | digest)
    if [ "$(recorded_inputs "$BINARIES")" != "$inputs" ]; then
        local staging=$WORK/binaries
        rm -rf "$staging"
        mkdir -p "$staging/src/target/release"
        for bin in "${bins[@]}"; do
            cp "target/release/$bin" "$staging/src/target/release/"
            strip "$staging/src/target/release/$bin"
        done
        tar -C "$staging" -c src | docker import --change "LABEL $LABEL=$inputs" - "$BINARIES" >/dev/null
        rm -rf "$staging"
    fi
    local dockerfile=$WORK/runtime.Dockerfile
    grep -q '^FROM build AS binaries$' Dockerfile || die "Dockerfile has no line 'FROM build AS binaries'"
    {
        printf 'ARG BASE\nARG BINARIES\nFROM ${BINARIES} AS binaries\n'
        sed -n '/^FROM build AS binaries$/,$p' Dockerfile | tail -n +2
    } >"$dockerfile"
    local product_inputs
    product_inputs=$( (sha256sum "$dockerfile" demo/flows.toml; folder_digest demo/migrations
        image_id "$BASE"; image_id "$BINARIES") | digest)
    for target in product demo; do
        local name=outbox-relay:latest
        [ "$target" = demo ] && name=outbox-relay-demo:latest
        build "$name" "$product_inputs" . -f "$dockerfile" --target "$target" \
            --build-arg BASE="$BASE" --build-arg BINARIES="$BINARIES"
    done
}

# The image names, where compose and the tests find them.
write_env() {
    local begin='# >>> scripts/images.sh' end='# <<< scripts/images.sh' kept=
    if [ -f "$ENV_FILE" ]; then
        kept=$(sed "\\|^$begin|,\\|^$end|d" "$ENV_FILE")
    fi
    {
        [ -n "$kept" ] && printf '%s\n' "$kept"
        cat <<ENV
$begin: images built on this machine (no registry reachable); docker-compose.yml,
# the tests' testcontainers backend and the systemd checks read them. Delete
# this block to use the official images.
POSTGRES_IMAGE=$PREFIX/postgres:15
KAFKA_IMAGE=$PREFIX/kafka:$KAFKA_VERSION
CLICKHOUSE_IMAGE=$PREFIX/clickhouse-server:18.16
SYSTEMD_IMAGE=$PREFIX/systemd:$SUITE
$end
ENV
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

mkdir -p "$WORK"
base_image
local_image "$PREFIX/postgres:15" devstack/images/postgres
local_image "$PREFIX/clickhouse-server:18.16" devstack/images/clickhouse
context=$(kafka_context)
local_image "$PREFIX/kafka:$KAFKA_VERSION" devstack/images/kafka "$context" "$(ls "$context/libs")"
local_image "$PREFIX/systemd:$SUITE" devstack/images/systemd
product_images
write_env
docker image prune --force --filter "label=$LABEL" >/dev/null
log "images ready in $((SECONDS - started_all)) s; names in $ENV_FILE; Docker's disk use: $(docker_disk_use)"
