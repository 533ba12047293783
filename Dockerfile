# Multi-stage build of the relay, sink and stage binaries; the runtime image
# holds only the binaries, OpenSSL and CA certificates, and runs as a
# non-root user.
FROM rust:1-bookworm AS build
# OpenSSL's headers for TLS to Postgres, ClickHouse and Kafka (the image
# usually has them; stated so the build does not depend on it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p outbox-cli --bins \
 && strip target/release/relay target/release/sink target/release/stage

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home outbox
COPY --from=build /src/target/release/relay /src/target/release/sink /src/target/release/stage /usr/local/bin/
USER 10001
CMD ["relay", "--help"]
