"""Commands that consume the fleet data for software that resolves once and never again:
``metadns render`` (config files with live server tokens) and ``metadns redis-repair``."""
