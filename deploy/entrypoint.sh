#!/bin/sh
# Run a metadns service once the link-local service address is on this host (or in this network
# namespace). The address is normally set up once on the host (README, "Deploying"); when it is
# missing and the container may add it (CAP_NET_ADMIN), it is added on METADNS_LINK_DEV. When it
# is missing and cannot be added, say so in one line and stop, instead of a bind error later.
set -eu
ADDRESS="${METADNS_LINK_LOCAL_IP:-169.254.169.250}"
if [ -n "$ADDRESS" ]; then
    if ! ip -o addr show 2>/dev/null | grep -q "inet6\{0,1\} $ADDRESS/"; then
        DEV="${METADNS_LINK_DEV:-metadns0}"
        if ! error=$(ip addr add "$ADDRESS/32" dev "$DEV" 2>&1); then
            echo "metadns: $ADDRESS is not on this host and cannot be added to $DEV ($error):" \
                 "set it up on the host (README, Deploying) or grant CAP_NET_ADMIN" >&2
            exit 1
        fi
        echo "metadns: added $ADDRESS to $DEV" >&2
    fi
fi
exec "$@"
