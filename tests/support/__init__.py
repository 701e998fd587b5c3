"""Helpers the tests share: required tools, real servers on loopback, log capture."""
