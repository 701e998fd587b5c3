"""The DNS service: fleet names from the answers table, everything else from upstream."""
