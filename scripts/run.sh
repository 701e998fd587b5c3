#!/usr/bin/env bash
# Set up and run metadns on loopback with the example fleet:
#   metadata on http://127.0.0.1:8080/   DNS on 127.0.0.1:5353 (UDP and TCP)
# Stop with Ctrl-C. Ports: METADATA_PORT, DNS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run
METADATA_PORT="${METADATA_PORT:-8080}"
DNS_PORT="${DNS_PORT:-5353}"
mkdir -p .state
.venv/bin/metadata-svc --listen "127.0.0.1:${METADATA_PORT}" --data examples/fleet.yaml \
    --state-file .state/metadata-last-good.json --self-host host-a &
METADATA_PID=$!
trap 'kill "$METADATA_PID" 2>/dev/null; wait' EXIT INT TERM
echo "metadata: curl http://127.0.0.1:${METADATA_PORT}/latest/services" >&2
wait "$METADATA_PID"
