#!/usr/bin/env bash
# Set up and run metadns on loopback with the example fleet:
#   metadata on http://127.0.0.1:8080/        DNS on 127.0.0.1:5353 (UDP and TCP)
# Ports: METADATA_PORT, DNS_PORT. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run
.venv/bin/python scripts/compile.py  # the DNS hot path compiled when it can be; the sources otherwise
METADATA_PORT="${METADATA_PORT:-8080}"
DNS_PORT="${DNS_PORT:-5353}"
mkdir -p .state
.venv/bin/metadata-svc --listen "127.0.0.1:${METADATA_PORT}" --data examples/fleet.yaml \
    --state-file .state/metadata-last-good.json --self-host host-a &
METADATA_PID=$!
trap 'kill "$METADATA_PID" 2>/dev/null || true; wait' EXIT INT TERM
# DNS starts once metadata serves its fleet (GET /healthz), so that its first ask is answered;
# after 30 s it starts anyway (it retries until metadata answers), and this says so.
HEALTHZ="http://127.0.0.1:${METADATA_PORT}/healthz"
healthy() {  # no proxy from the environment: the address is loopback
    .venv/bin/python -c 'import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=1)' \
        "$HEALTHZ" 2>/dev/null
}
DEADLINE=$((SECONDS + 30))
until healthy; do
    kill -0 "$METADATA_PID" 2>/dev/null || { echo "run.sh: the metadata service exited" >&2; exit 1; }
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
        echo "run.sh: ${HEALTHZ} is not answering after 30 s; starting DNS anyway" >&2
        break
    fi
    sleep 0.1
done
.venv/bin/dns-svc --listen "127.0.0.1:${DNS_PORT}" --metadata-url "http://127.0.0.1:${METADATA_PORT}/2016-07-29" \
    --state-file .state/dns-last-good.json --metadata-answer 127.0.0.1 &
DNS_PID=$!
trap 'kill "$METADATA_PID" "$DNS_PID" 2>/dev/null || true; wait' EXIT INT TERM
cat >&2 <<MSG
metadns is running on loopback with examples/fleet.yaml (edit it: changes are picked up live)
  curl http://127.0.0.1:${METADATA_PORT}/latest/stacks/shop/services/web/containers
  curl -H 'Accept: application/json' http://127.0.0.1:${METADATA_PORT}/latest/services/web
  dig @127.0.0.1 -p ${DNS_PORT} web.shop.rancher.internal
  dig @127.0.0.1 -p ${DNS_PORT} _web._tcp.shop.rancher.internal SRV
MSG
wait -n "$METADATA_PID" "$DNS_PID"
