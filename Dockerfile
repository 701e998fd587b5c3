# One image for both services; compose.yaml picks the command.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY metadata_svc ./metadata_svc
COPY dns_svc ./dns_svc
COPY consumers ./consumers
RUN pip install --no-cache-dir . && rm -rf /src
COPY deploy/entrypoint.sh /usr/local/bin/metadns-entrypoint
RUN mkdir -p /var/lib/metadns /etc/metadns
WORKDIR /
ENTRYPOINT ["/usr/local/bin/metadns-entrypoint"]
CMD ["metadata-svc"]
