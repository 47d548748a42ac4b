"""Workload 5: `listserver import` of a generated archive (and the corpus for workload 4).

The mbox comes from ``tests/mboxgen.py`` with ``variety=True``: thread shapes like a real
list (sizes drawn around 10, replies under one of the last few messages, a few replies
before their parent), Norwegian and English, ISO-8859-1 and UTF-8, some HTML mail. The
import runs as its own process: messages/s over its whole run (start-up included) and its
peak RSS from its own rusage. Reference in the same run: notmuch indexing the same
messages (`notmuch new` on a Maildir of them), when notmuch is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import LISTSERVER, ROOT, Row, run_measured

sys.path.insert(0, str(ROOT / "tests"))

CONFIG = """
[site]
domain = "lists.example.org"
[database]
url = "sqlite:///{dir}/archive.sqlite3"
[archive]
directory = "{archive}"
search = {search}
[[list]]
name = "blog"
title = "Sosialt entreprenørskap"
description = "Innlegg og kommentarer om sosialt entreprenørskap i Oslo kommune."
language = "nb"
timezone = "Europe/Oslo"
authors = ["ivar@example.no"]
post_secret = "benchsecret"
"""


@dataclass
class Corpus:
    directory: Path
    mbox: Path
    messages: int
    threads: int

    def config(self, archive: Path, search: bool = False) -> Path:
        path = self.directory / f"config-{archive.name}-{int(search)}.toml"
        path.write_text(CONFIG.format(dir=self.directory, archive=archive,
                                      search=str(search).lower()))
        return path


def generate(directory: Path, messages: int) -> Corpus:
    from mboxgen import generate as make
    mbox = directory / f"archive-{messages}.mbox"
    made = make(mbox, messages, variety=True)
    return Corpus(directory, mbox, made.messages, made.threads)


def import_corpus(corpus: Corpus) -> tuple[float, float]:
    """Import into a fresh database: (seconds, peak RSS MB) of the import process."""
    config = corpus.config(corpus.directory / "site")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{corpus.directory}/archive.sqlite3{suffix}").unlink(missing_ok=True)
    subprocess.run(LISTSERVER + ["--config", str(config), "init"], check=True,
                   stdout=subprocess.DEVNULL)
    seconds, peak, out = run_measured(LISTSERVER + ["--config", str(config), "import", "blog",
                                                    str(corpus.mbox)], timeout=3600)
    assert f"{corpus.messages} new" in out, out
    return seconds, peak


def notmuch_reference(corpus: Corpus) -> float | None:
    """Seconds for `notmuch new` to index the same messages from a Maildir."""
    notmuch = shutil.which("notmuch")
    if notmuch is None:
        return None
    from listserver.mbox import read_mbox
    maildir = corpus.directory / "notmuch-mail"
    shutil.rmtree(maildir, ignore_errors=True)
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n, message in enumerate(read_mbox(corpus.mbox)):
        (maildir / "cur" / f"{n}.eml:2,S").write_bytes(message.raw)
    cfg = corpus.directory / "notmuch-config"
    cfg.write_text(f"[database]\npath={maildir}\n[user]\nname=b\nprimary_email=b@example.net\n"
                   "[new]\ntags=\n[search]\nexclude_tags=\n")
    env = {**os.environ, "NOTMUCH_CONFIG": str(cfg)}
    seconds, _, _ = run_measured([notmuch, "new", "--quiet"], timeout=1800, env=env)
    shutil.rmtree(maildir, ignore_errors=True)
    return seconds


def run(corpus: Corpus) -> list[Row]:
    seconds, peak = import_corpus(corpus)
    reference = notmuch_reference(corpus)
    name = f"import {corpus.messages:,} messages ({corpus.threads:,} threads)"
    rows = [Row(name, "listserver import", corpus.messages / seconds, "msg/s",
                "notmuch new" if reference else "", corpus.messages / reference
                if reference else 0.0),
            Row(name, "peak RSS of the import", peak, "MB", target="flat, < 200 MB")]
    return rows
