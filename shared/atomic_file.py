"""Replace a file so that a reader sees the old content or the new, never a mix, and a crash
mid-write leaves the old one: write a temporary file beside it, fsync, rename over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """``text`` in UTF-8, or ``bytes`` as they are."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    data = text.encode() if isinstance(text, str) else text
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
