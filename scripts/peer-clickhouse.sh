#!/usr/bin/env bash
# A fresh throw-away ClickHouse for one Kafka-engine measurement of the
# benchmark (bench runs this before each): a ClickHouse 18.16 server dies
# when a Kafka table is dropped (its bundled librdkafka asserts), so each
# measurement gets a new server. Prints its URL.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
stop_peer_clickhouse
ensure_peer_clickhouse
