# One image for both services; compose.yaml and deploy/kubernetes pick the command.
FROM python:3.11-slim-bookworm
# iproute2: the entrypoint checks (and, with CAP_NET_ADMIN, adds) the link-local address.
# libcap2-bin: setcap, so that the non-root user may bind ports 53 and 80.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY metadata_svc ./metadata_svc
COPY dns_svc ./dns_svc
COPY consumers ./consumers
RUN pip install --no-cache-dir . && rm -rf /src
# The services run as an unprivileged user; binding ports below 1024 is the one privilege they
# need, given to the interpreter as a file capability (effective only where the container's
# bounding set keeps NET_BIND_SERVICE, which compose.yaml and the DaemonSet do).
RUN setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)" \
 && useradd --system --uid 10001 --home-dir /var/lib/metadns --shell /usr/sbin/nologin metadns \
 && mkdir -p /var/lib/metadns /etc/metadns/fleet \
 && chown metadns:metadns /var/lib/metadns
COPY deploy/entrypoint.sh /usr/local/bin/metadns-entrypoint
USER metadns
WORKDIR /
ENTRYPOINT ["/usr/local/bin/metadns-entrypoint"]
CMD ["metadata-svc", "--help"]
