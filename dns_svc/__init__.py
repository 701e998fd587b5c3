"""The DNS service: fleet names from the answers table, everything else from upstream."""

from dns_svc.compiled import install

install()  # the compiled hot path, when it was built from exactly these sources
