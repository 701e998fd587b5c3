#!/bin/sh
# Give the shared network namespace the link-local service address (as Rancher's start.sh did),
# then run the service. Needs CAP_NET_ADMIN; harmless when the address is already there.
set -e
ADDRESS="${METADNS_LINK_LOCAL_IP:-169.254.169.250}"
if [ -n "$ADDRESS" ] && command -v ip >/dev/null 2>&1; then
    ip addr add "$ADDRESS/32" dev "${METADNS_LINK_DEV:-eth0}" 2>/dev/null || true
fi
exec "$@"
