"""Writing the archive's files: whole or not at all.

Every file is written under a temporary name in its own directory and renamed over the
old one (``os.replace`` is atomic on POSIX), so a reader, a web server or the search
indexer never sees half a page. Temporary names start with ``.tmp-`` and are never
served as pages; ``sweep`` removes any that a crash left behind.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


class ArchiveFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: set[Path] = set()
        self.written = 0

    def path(self, relative: str) -> Path:
        return self.root / relative

    def exists(self, relative: str) -> bool:
        return (self.root / relative).exists()

    def write(self, relative: str, data: str | bytes) -> None:
        path = self.root / relative
        parent = path.parent
        if parent not in self._dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        tmp = parent / f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}.part"
        payload = data.encode("utf-8") if isinstance(data, str) else data
        with open(tmp, "wb") as fh:
            fh.write(payload)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.written += 1

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove temporary files older than ``older_than`` seconds (left by a crash)."""
        removed = 0
        limit = time.time() - older_than
        if not self.root.exists():
            return 0
        for tmp in self.root.rglob(".tmp-*"):
            try:
                if tmp.is_file() and tmp.stat().st_mtime < limit:
                    tmp.unlink()
                    removed += 1
            except OSError:
                continue
        return removed
