"""Command-line flags that each have an environment twin and show both in ``--help``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``flag()`` reads its default from ``<PREFIX>_<NAME>``.

    The environment variable wins over the built-in default and the command line wins over both,
    which is what container deployments expect (uvicorn and CoreDNS do the same).
    """

    def __init__(self, env_prefix: str, env: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)
        self.env_prefix = env_prefix
        self.env = os.environ if env is None else env
        self._append_defaults: dict[str, list[Any]] = {}
        self._env_checks: list[tuple[str, str, Any]] = []  # (dest, env name, choices) of values from the environment
        self._env_errors: list[str] = []

    def env_name(self, flag: str) -> str:
        return f"{self.env_prefix}_{flag.lstrip('-').replace('-', '_').upper()}"

    def flag(self, name: str, *, default: Any = None, help: str, env_separator: str = ",", **kwargs: Any) -> None:
        """Add ``--name``; its default comes from the environment twin when that is set."""
        env_name = self.env_name(name)
        raw = self.env.get(env_name)
        action = kwargs.get("action")
        if action == "store_true" and default is None:
            default = False
        if raw is not None:
            if action == "store_true":
                default = raw.strip().lower() in {"1", "true", "yes", "on"}
            elif action == "append":
                default = [item.strip() for item in raw.split(env_separator) if item.strip()]
            else:
                try:
                    default = kwargs["type"](raw) if "type" in kwargs else raw
                except ValueError:
                    self._env_errors.append(f"{env_name}={raw!r} is not a valid value for {name}")
                    default = None
                if "choices" in kwargs:
                    self._env_checks.append((name.lstrip("-").replace("-", "_"), env_name, kwargs["choices"]))
        shown = "off" if action == "store_true" and not default else default
        if isinstance(shown, list):
            shown = ",".join(map(str, shown)) or "none"
        full_help = f"{help} [env {env_name}; default: {shown}]"
        if action == "append":
            # argparse appends to a list default instead of replacing it: start empty, fill later.
            self.set_defaults(**{name.lstrip("-").replace("-", "_"): None})
            self.add_argument(name, help=full_help, **kwargs)
            self._append_defaults[name.lstrip("-").replace("-", "_")] = list(default or [])
            return
        self.add_argument(name, default=default, help=full_help, **kwargs)

    def parse_flags(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse ``argv``; a bad value from the environment is an error like a bad flag."""
        ns = self.parse_args(argv)
        if self._env_errors:
            self.error(self._env_errors[0])
        for dest, env_name, choices in self._env_checks:
            if getattr(ns, dest) not in choices:
                self.error(f"{env_name}={getattr(ns, dest)!r}: choose from {', '.join(map(str, choices))}")
        for dest, default in self._append_defaults.items():
            if getattr(ns, dest) is None:
                setattr(ns, dest, list(default))
        return ns


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """Split ``HOST:PORT``, ``[v6]:PORT``, ``HOST`` or ``:PORT``; raise ValueError when malformed."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unclosed '[' in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after ']' in {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"port must be 0-65535 in {text!r}")
        port = int(port_text)
    return host or "0.0.0.0", port
