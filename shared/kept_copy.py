"""The last good fleet on disk, so a restart serves it even when the source is unreadable.

Written atomically (temporary file, fsync, rename) so a crash mid-write leaves the previous copy.
It also carries the index, which is how versions keep moving forward across restarts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from shared.model import Fleet, FleetError


class KeptCopy:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> tuple[Fleet, int]:
        """The kept fleet and its index; FleetError when missing or unusable."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            index = int(doc["index"])
            return Fleet.from_mapping(doc["fleet"]), index
        except FleetError as exc:
            raise FleetError(str(self.path), f"kept copy invalid: {exc}") from None
        except FileNotFoundError:
            raise FleetError(str(self.path), "no kept copy yet") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FleetError(str(self.path), f"kept copy unusable: {exc}") from None

    def save(self, fleet: Fleet, index: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"index": index, "digest": fleet.digest, "fleet": fleet.raw}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
