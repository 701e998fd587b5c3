"""The metadata service: the fleet over HTTP, by path, per client, with long-poll."""
