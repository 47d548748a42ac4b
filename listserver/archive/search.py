"""Full-text search over the static files: a Pagefind index per list.

Pagefind (the binary ships inside the ``pagefind-bin`` wheel) reads the rendered post
pages (only they carry ``data-pagefind-body``) and writes a static index that its
JavaScript UI queries in the browser: any web server can serve it.

The index is built into a hidden directory and then moved into ``NAME/pagefind/`` file
by file: the content-hashed chunks first, ``pagefind-entry.json`` (which names them) last,
each with an atomic rename. A browser searching meanwhile uses the old entry file with
the old chunks, which stay until a later build removes them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger("listserver.archive")

ENTRY = "pagefind-entry.json"


def executable() -> str | None:
    try:
        from pagefind_bin import get_executable
        return str(get_executable())
    except (ImportError, FileNotFoundError):
        return shutil.which("pagefind")


def build_index(list_dir: Path, language: str, timeout: float = 600.0) -> bool:
    """(Re)build ``list_dir/pagefind``; False (and a log line) when it cannot."""
    binary = executable()
    if binary is None:
        log.warning("search index not built: the pagefind binary is not installed")
        return False
    if not next((list_dir / "posts").glob("*.html"), None):
        return False  # nothing to index yet (Pagefind refuses an empty site)
    build = list_dir / ".pagefind-build"
    shutil.rmtree(build, ignore_errors=True)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [binary, "--site", str(list_dir), "--output-path", str(build),
             "--glob", "posts/*.html", "--force-language", language, "--silent"],
            capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("pagefind failed for %s: %s", list_dir, exc)
        shutil.rmtree(build, ignore_errors=True)
        return False
    if result.returncode != 0 or not (build / ENTRY).exists():
        log.error("pagefind failed for %s (exit %s): %s", list_dir, result.returncode,
                  (result.stderr or result.stdout).strip()[-2000:])
        shutil.rmtree(build, ignore_errors=True)
        return False
    install(build, list_dir / "pagefind")
    log.info("search index of %s built in %.1fs", list_dir.name, time.monotonic() - started)
    return True


def install(build: Path, target: Path) -> None:
    """Move a fresh bundle over the served one without a moment of inconsistency.

    Files the new bundle no longer uses are listed in ``.stale`` and removed by the next
    build, so a search that loaded the previous entry file can still fetch its chunks.
    """
    new_files = sorted(str(p.relative_to(build)) for p in build.rglob("*") if p.is_file())
    stale_list = target / ".stale"
    old_stale = set(stale_list.read_text().split("\n")) - {""} if stale_list.exists() else set()
    before = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} \
        if target.exists() else set()
    for relative in [f for f in new_files if Path(f).name != ENTRY] + \
            [f for f in new_files if Path(f).name == ENTRY]:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build / relative, destination)
    keep = set(new_files) | {".stale"}
    for relative in old_stale - keep:
        (target / relative).unlink(missing_ok=True)
    stale_list.write_text("\n".join(sorted(before - keep - old_stale)))
    shutil.rmtree(build, ignore_errors=True)
