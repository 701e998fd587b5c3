"""Code both services use: the fleet data model, config and logging helpers."""
