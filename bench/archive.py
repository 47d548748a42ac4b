"""Workload 4: the static archive of a generated list, next to MHonArc on the same mbox.

Full render: `listserver render --full` (its own process, wall time, start-up included)
into an empty directory, without and with the Pagefind search index, next to MHonArc
(Debian's `mhonarc`) on the same mbox in the same run, with its default settings and with
its `utf-8-encode.mrc` resource file (the faster of the two here); medians of three rounds
at up to 20,000 messages. Incremental: the time
from a new comment's commit to its page on disk (bench/incremental.py), median and worst
of 20, and the same for a new post.
"""

from __future__ import annotations

import gzip
import json
import shutil
import statistics
import subprocess
from pathlib import Path

from common import LISTSERVER, PYTHON, ROOT, Row, need, run_measured
from importer import Corpus

UTF8_MRC = Path("/usr/share/doc/mhonarc/examples/utf-8-encode.mrc")


def render_full(corpus: Corpus, search: bool) -> float:
    site = corpus.directory / ("site-search" if search else "site")
    shutil.rmtree(site, ignore_errors=True)
    config = corpus.config(site, search)
    seconds, _, out = run_measured(LISTSERVER + ["--config", str(config), "render", "--full"],
                                   timeout=1800)
    assert f"rendered {corpus.threads} post(s)" in out, out
    return seconds


def mhonarc(corpus: Corpus, utf8: bool) -> float:
    out = corpus.directory / ("mhonarc-utf8" if utf8 else "mhonarc")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = [need("mhonarc"), "-quiet", "-outdir", str(out)]
    if utf8:
        args += ["-rcfile", str(utf8_mrc(corpus.directory))]
    seconds, _, _ = run_measured(args + [str(corpus.mbox)], timeout=1800)
    pages = len(list(out.glob("msg*.html")))
    assert pages == corpus.messages, f"MHonArc wrote {pages} message pages"
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def utf8_mrc(directory: Path) -> Path:
    if UTF8_MRC.exists():
        return UTF8_MRC
    packed = UTF8_MRC.with_suffix(".mrc.gz")
    copy = directory / "utf-8-encode.mrc"
    copy.write_bytes(gzip.decompress(packed.read_bytes()))
    return copy


def incremental(corpus: Corpus, count: int = 20) -> dict[str, float]:
    """Needs the archive that render_full(corpus, search=False) wrote."""
    config = corpus.config(corpus.directory / "site")
    done = subprocess.run([PYTHON, str(ROOT / "bench" / "incremental.py"), str(config),
                           str(count)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(corpus: Corpus, rounds: int = 3) -> list[Row]:
    """Medians of `rounds` rounds (one above 20,000 messages), each tool in turn."""
    name = f"archive {corpus.messages:,} messages ({corpus.threads:,} threads)"
    rounds = rounds if corpus.messages <= 20_000 else 1
    times: dict[str, list[float]] = {"ours": [], "search": [], "mh": [], "mh8": []}
    for _ in range(rounds):
        times["search"].append(render_full(corpus, search=True))
        times["mh"].append(mhonarc(corpus, utf8=False))
        times["mh8"].append(mhonarc(corpus, utf8=True))
        times["ours"].append(render_full(corpus, search=False))  # last: incremental uses it
    ours, ours_search, mh_default, mh_utf8 = (statistics.median(times[k]) for k in (
        "ours", "search", "mh", "mh8"))
    fastest = min(mh_default, mh_utf8)
    which = "MHonArc utf-8-encode.mrc" if mh_utf8 <= mh_default else "MHonArc default"
    inc = incremental(corpus)
    return [
        Row(name, "full render, no search", ours, "s", which, fastest,
            "≤ 0.20× (5× faster)"),
        Row(name, "full render + Pagefind index", ours_search, "s", which, fastest),
        Row(name, "MHonArc, default settings", mh_default, "s", "MHonArc utf-8-encode.mrc",
            mh_utf8),
        Row(name, "new comment → page on disk (median)", inc["comment_median"], "ms",
            target="< 50 ms"),
        Row(name, "new comment → page on disk (worst of 20)", inc["comment_max"], "ms"),
        Row(name, "new post → index on disk (median)", inc["post_median"], "ms"),
    ]
