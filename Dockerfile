# Multi-stage build. `product` (the default target, the last stage): the
# relay, sink and stage binaries, OpenSSL and CA certificates, run as a
# non-root user. `demo` (docker-compose.yml's): the same plus the demo —
# `outbox-demo` and its flows and migrations under
# /usr/local/share/outbox-relay/demo, for FLOWS_FILE and MIGRATIONS_DIR.
# Neither has crash points: a release build leaves the `failpoints` feature
# off (daemon/src/failpoint.rs).
#
# On a machine that reaches no image registry, scripts/images.sh builds the
# stages from `binaries` on — these lines — with `binaries` an image of
# release binaries built on the host instead of the `build` stage, and BASE
# its local Debian 12 image.
ARG BASE=debian:bookworm-slim

FROM rust:1-bookworm AS build
# OpenSSL's headers for TLS to Postgres, ClickHouse and Kafka (the image
# usually has them; stated so the build does not depend on it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p outbox-cli -p outbox-demo --bins \
 && strip target/release/relay target/release/sink target/release/stage target/release/outbox-demo

# Where the runtime stages take the binaries from (/src/target/release).
FROM build AS binaries

FROM ${BASE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home outbox
COPY --from=binaries /src/target/release/relay /src/target/release/sink /src/target/release/stage /usr/local/bin/
USER 10001
CMD ["relay", "--help"]

FROM runtime AS demo
COPY --from=binaries /src/target/release/outbox-demo /usr/local/bin/
COPY demo/flows.toml /usr/local/share/outbox-relay/demo/flows.toml
COPY demo/migrations /usr/local/share/outbox-relay/demo/migrations

FROM runtime AS product
