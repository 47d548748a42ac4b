"""Workload 4: the static archive of a generated list, next to MHonArc on the same mbox.

Full render: `listserver render --full` (its own process, wall time, start-up included)
into an empty directory, without and with the Pagefind search index, next to MHonArc
(Debian's `mhonarc`) on the same mbox in the same run, with its default settings and with
its `utf-8-encode.mrc` resource file (the faster of the two here); medians of three rounds
at up to 20,000 messages, each tool in turn. Both write to the same disk; the same two
also write to a tmpfs (/dev/shm), which leaves out the disk: on this shared machine,
creating a file costs ~100 µs of kernel time, and deleting many (with online discard)
slows the next writer down, so every run writes into a new directory and all are
removed at the end. Incremental: the time from a new comment's commit to its page on
disk (bench/incremental.py), median and worst of 20, and the same for a new post.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import LISTSERVER, PYTHON, ROOT, Row, need, run_measured
from importer import Corpus

UTF8_MRC = Path("/usr/share/doc/mhonarc/examples/utf-8-encode.mrc")
_runs = itertools.count()


def fresh(base: Path, name: str) -> Path:
    """A directory that does not exist yet (nothing is deleted before a measured run)."""
    os.sync()  # the previous run's writes are not this one's to pay for
    return base / f"{name}-{next(_runs)}"


def render_full(corpus: Corpus, site: Path, search: bool) -> float:
    config = corpus.config(site, search)
    seconds, _, out = run_measured(LISTSERVER + ["--config", str(config), "render", "--full"],
                                   timeout=1800)
    assert f"rendered {corpus.threads} post(s)" in out, out
    return seconds


def mhonarc(corpus: Corpus, out: Path, utf8: bool) -> float:
    out.mkdir(parents=True)
    args = [need("mhonarc"), "-quiet", "-outdir", str(out)]
    if utf8:
        args += ["-rcfile", str(utf8_mrc(corpus.directory))]
    seconds, _, _ = run_measured(args + [str(corpus.mbox)], timeout=3600)
    pages = sum(1 for name in os.listdir(out) if name.startswith("msg"))
    assert pages == corpus.messages, f"MHonArc wrote {pages} message pages"
    return seconds


def utf8_mrc(directory: Path) -> Path:
    if UTF8_MRC.exists():
        return UTF8_MRC
    packed = UTF8_MRC.with_suffix(".mrc.gz")
    copy = directory / "utf-8-encode.mrc"
    copy.write_bytes(gzip.decompress(packed.read_bytes()))
    return copy


def incremental(corpus: Corpus, site: Path, count: int = 20) -> dict[str, float]:
    """Needs the archive that render_full(corpus, site, search=False) wrote."""
    config = corpus.config(site)
    done = subprocess.run([PYTHON, str(ROOT / "bench" / "incremental.py"), str(config),
                           str(count)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(corpus: Corpus, rounds: int = 3) -> list[Row]:
    """Medians of `rounds` rounds (one above 20,000 messages), each tool in turn."""
    name = f"archive {corpus.messages:,} messages ({corpus.threads:,} threads)"
    rounds = rounds if corpus.messages <= 20_000 else 1
    disk = corpus.directory / "out"
    memory = Path(tempfile.mkdtemp(prefix="listserver-bench-", dir="/dev/shm")) \
        if Path("/dev/shm").is_dir() else None
    times: dict[str, list[float]] = {k: [] for k in ("ours", "search", "mh", "mh8", "ours-m",
                                                     "mh8-m")}
    site = disk
    try:
        for _ in range(rounds):
            times["search"].append(render_full(corpus, fresh(disk, "search"), True))
            times["mh"].append(mhonarc(corpus, fresh(disk, "mhonarc"), utf8=False))
            times["mh8"].append(mhonarc(corpus, fresh(disk, "mhonarc-utf8"), utf8=True))
            site = fresh(disk, "site")
            times["ours"].append(render_full(corpus, site, False))
            if memory is not None and corpus.messages <= 20_000:
                times["mh8-m"].append(mhonarc(corpus, fresh(memory, "mhonarc-utf8"), True))
                times["ours-m"].append(render_full(corpus, fresh(memory, "site"), False))
                shutil.rmtree(memory, ignore_errors=True)
                memory.mkdir()
        inc = incremental(corpus, site)
    finally:
        if memory is not None:
            shutil.rmtree(memory, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items() if v}
    fastest = min(median["mh"], median["mh8"])
    which = "MHonArc utf-8-encode.mrc" if median["mh8"] <= median["mh"] else "MHonArc default"
    rows = [
        Row(name, "full render, no search", median["ours"], "s", which, fastest,
            "≤ 0.20× (5× faster)"),
        Row(name, "full render + Pagefind index", median["search"], "s", which, fastest),
        Row(name, "MHonArc, default settings", median["mh"], "s", "MHonArc utf-8-encode.mrc",
            median["mh8"]),
    ]
    if "ours-m" in median:
        rows.append(Row(name, "full render, no search, on tmpfs", median["ours-m"], "s",
                        "MHonArc utf-8-encode.mrc on tmpfs", median["mh8-m"]))
    rows += [
        Row(name, "new comment → page on disk (median)", inc["comment_median"], "ms",
            target="< 50 ms"),
        Row(name, "new comment → page on disk (worst of 20)", inc["comment_max"], "ms"),
        Row(name, "new post → index on disk (median)", inc["post_median"], "ms"),
    ]
    return rows
