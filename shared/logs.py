"""One structured line per event: ``ts=... level=... event=... key=value ...``.

Operators grep and ship these lines; a fixed ``event=`` key makes every line searchable and the
``key=value`` form needs no JSON parser to read.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class KeyValueFormatter(logging.Formatter):
    """Formats ``log_event`` records (and plain records) as one ``key=value`` line; with
    ``with_pid``, each line names its process (several workers write to one stream)."""

    def __init__(self, with_pid: bool = False) -> None:
        super().__init__()
        self.with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", None) or {"msg": record.getMessage()}
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}", f"logger={record.name}"]
        if self.with_pid:
            parts.append(f"pid={record.process}")
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log one event as a single line; ``fields`` become ``key=value`` pairs in order."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": {"event": event, **fields}})


def setup_logging(level: str = "info", with_pid: bool = False) -> None:
    """Send every logger to stderr in the key=value format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(with_pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class ThrottledLog:
    """One line per ``interval`` seconds for an event that can come in floods (garbage packets,
    malformed upstream replies): the first occurrence is logged at once, the rest are counted
    and the count goes out with the next line. A flood costs a counter, not a line each."""

    def __init__(
        self, logger: logging.Logger, event: str, interval: float = 10.0, level: int = logging.WARNING
    ) -> None:
        self.logger = logger
        self.event = event
        self.interval = interval
        self.level = level
        self.last = -interval
        self.suppressed = 0
        self.total = 0

    def note(self, **fields: Any) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        log_event(self.logger, self.level, self.event, **fields, since_last=self.suppressed)
        self.last = now
        self.suppressed = 0
