"""The HTTP server's own log: a request aiohttp cannot parse is one throttled line, not a traceback.

aiohttp answers a malformed request (a 60 KB path, a 100 KB header, 10,000 headers) with a correct
``400`` and logs it with ``logger.exception``: about 1.5 KB of traceback each, so anyone who can
reach the port can fill the disk. ``RequestErrorLog`` is the logger handed to aiohttp's server:
such errors become ``event=bad_http_request``, at most one line per kind per 10 s with a count
(``ThrottledLog``, as the DNS side does for garbage packets). Anything else aiohttp logs (an
exception in a handler: a defect of ours) keeps its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from shared.logs import ThrottledLog

PROBLEM_CHARS = 160  # a parser message may quote the offending bytes: enough to tell what it was


class RequestErrorLog(logging.Logger):
    def __init__(self, parent: logging.Logger) -> None:
        super().__init__(f"{parent.name}.http")
        self.parent = parent
        self.by_kind: dict[str, ThrottledLog] = {}

    def _bad_request(self, args: tuple[Any, ...], exc_info: Any) -> bool:
        """Note a malformed request; False when ``exc_info`` is not one."""
        if not isinstance(exc_info, HttpProcessingError):
            return False
        kind = type(exc_info).__name__
        throttled = self.by_kind.get(kind)
        if throttled is None:
            throttled = self.by_kind[kind] = ThrottledLog(self.parent or self, "bad_http_request")
        client = str(args[0]) if args else ""
        problem = str(exc_info.message or exc_info).replace("\n", " ")[:PROBLEM_CHARS]
        throttled.note(kind=kind, status=exc_info.code, client=client, problem=problem)
        return True

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._bad_request(args, exc_info):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._bad_request(args, kwargs.get("exc_info")):
            super().debug(msg, *args, **kwargs)
