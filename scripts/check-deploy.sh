#!/usr/bin/env bash
# Validates the deployment files without a Docker engine: docker-compose.yml
# with `docker-compose config` (Debian's docker-compose 1.29; the compose
# plugin is not packaged here).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
command -v docker-compose >/dev/null || apt_install docker-compose
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile generator config -q
log "docker-compose.yml is valid"
