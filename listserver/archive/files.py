"""Writing the archive's files: whole or not at all.

Every file is written under a temporary name in its own directory and renamed over the
old one (``os.replace`` is atomic on POSIX), so a reader, a web server or the search
indexer never sees half a page. Temporary names start with ``.tmp-`` and are never
served as pages; ``sweep`` removes any that a crash left behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


TMP_BUILD = ".tmp-build-"   # a list's first render, in the archive directory


class ArchiveFiles:
    def __init__(self, root: Path, direct: bool = False) -> None:
        """``direct``: write each file in place, for a directory no reader sees yet."""
        self.root = root
        self._root = str(root)
        self._dirs: set[str] = set()
        self._serial = itertools.count()
        self.direct = direct
        self.written = 0

    def path(self, relative: str) -> Path:
        return self.root / relative

    def exists(self, relative: str) -> bool:
        return os.path.exists(f"{self._root}/{relative}")

    def write(self, relative: str, data: str | bytes) -> None:
        # Plain strings and os calls: a full render writes tens of thousands of files.
        path = f"{self._root}/{relative}"
        parent, _, name = path.rpartition("/")
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        # pid and a counter: unique among running writers (a crash's leftovers are swept)
        tmp = path if self.direct else \
            f"{parent}/.tmp-{os.getpid()}-{next(self._serial)}-{name}.part"
        payload = data.encode("utf-8") if isinstance(data, str) else data
        try:
            fd = os.open(tmp, _FLAGS, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            if tmp is not path:
                os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.written += 1

    def sweep(self, older_than: float = 3600.0) -> int:
        """Remove temporary files older than ``older_than`` seconds (left by a crash)."""
        removed = 0
        limit = time.time() - older_than
        try:
            builds = [e for e in os.scandir(self._root) if e.name.startswith(TMP_BUILD)]
        except OSError:
            builds = []
        for entry in builds:  # a first render that did not finish
            try:
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        for directory, dirs, names in os.walk(self._root):
            dirs[:] = [d for d in dirs if not d.startswith(TMP_BUILD)]
            for name in names:
                if not name.startswith(".tmp-"):
                    continue
                tmp = os.path.join(directory, name)
                try:
                    if os.lstat(tmp).st_mtime < limit:
                        os.unlink(tmp)
                        removed += 1
                except OSError:
                    continue
        return removed
