"""``listserver import``: the corpus answers of DESIGN.md for imports, a 10,000-message
archive (thread counts, nothing doubled on a second run, search), threading as notmuch
threads it, pipermail and gzip, and export/import round trips."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listserver.archive import Archive
from listserver.importer import import_mbox
from listserver.mbox import read_mbox, write_message
from listserver.models import Comment, Message, Outbox, Post

from archivekit import list_dir, parse
from browser import CHROMIUM, Browser
from conftest import CORPUS, RunningServer
from mboxgen import generate, marker

THREADING = CORPUS / "threading"
NOTMUCH = shutil.which("notmuch")


def counts(app) -> dict[str, int]:
    def q(session):
        return {"posts": session.execute(select(func.count()).select_from(Post)).scalar_one(),
                "comments": session.execute(select(func.count()).select_from(Comment))
                .scalar_one(),
                "messages": session.execute(select(func.count()).select_from(Message))
                .scalar_one(),
                "held": session.execute(select(func.count()).select_from(Message).where(
                    Message.state == "held")).scalar_one(),
                "outbox": session.execute(select(func.count()).select_from(Outbox))
                .scalar_one()}
    return app.db.call(q)


def parents(app) -> dict[str, str | None]:
    """Message-ID -> the Message-ID it is shown under (None for a post)."""
    def q(session):
        out: dict[str, str | None] = {}
        posts = {pk: mid for pk, mid in session.execute(select(Post.id, Post.message_id))}
        for mid in posts.values():
            out[mid] = None
        for mid, parent, post_id in session.execute(select(
                Comment.message_id, Comment.parent_message_id, Comment.post_id)):
            out[mid] = parent or posts[post_id]
        return out
    return app.db.call(q)


def corpus_mbox(path: Path) -> Path:
    with open(path, "wb") as out:
        for name in sorted(os.listdir(THREADING)):
            if name.endswith(".eml"):
                write_message(out, (THREADING / name).read_bytes(), "x@example.org")
    return path


@pytest.mark.skipif(not THREADING.exists(), reason="shared corpus not present")
def test_corpus_import_answers(app, tmp_path) -> None:
    report = import_mbox(app, "blog", corpus_mbox(tmp_path / "corpus.mbox"))
    assert report.read == 12 and report.stored == 12
    p = parents(app)
    assert p["<root@example.org>"] is None                        # 01 a post
    assert p["<reply1@example.org>"] == "<root@example.org>"      # 02 under 01
    assert p["<reply2@example.org>"] == "<reply1@example.org>"    # 03 under 02
    assert p["<reply3@example.org>"] == "<root@example.org>"      # 04
    assert p["<reply4@example.org>"] == "<missing@example.org>"   # 05 moved under 08
    assert p["<orphan@example.org>"] is None                      # 06 its own post
    assert p["<other@example.org>"] is None                       # 07
    assert p["<missing@example.org>"] == "<root@example.org>"     # 08
    assert p["<loopA@example.org>"] is None                       # 09 a post ...
    assert p["<loopB@example.org>"] == "<loopA@example.org>"      # ... and 10 under it
    assert p["<conflict@example.org>"] == "<other@example.org>"   # 11
    # 12: 03's Message-ID with other content: its own post under a new ID; 03 untouched
    def q(session):
        return session.execute(select(Post.message_id, Post.author_address)).all()
    posts = app.db.call(q)
    assert len(posts) == 5
    mallory = [mid for mid, who in posts if who == "mallory@example.org"]
    assert len(mallory) == 1 and mallory[0] != "<reply2@example.org>"
    c = counts(app)
    assert c["held"] == 0 and c["outbox"] == 0  # nothing held, no notices, no mail
    # safe to run twice
    again = import_mbox(app, "blog", tmp_path / "corpus.mbox")
    assert again.stored == 0 and counts(app) == c


def test_pipermail_gzip_and_round_trip(app, make_app, tmp_path, config) -> None:
    pipermail = (
        b"From kari at example.net  Fri Mar  9 09:02:00 2018\n"
        b"From: kari at example.net (Kari Nordmann)\nDate: Fri, 09 Mar 2018 09:02:00 +0100\n"
        b"Subject: [blog] Hei\nMessage-ID: <p1@example.net>\n\nHei fra starten.\n"
        b">From escaped.\n\n"
        b"From per at example.net  Fri Mar  9 10:02:00 2018\n"
        b"From: per at example.net (Per)\nDate: Fri, 09 Mar 2018 10:02:00 +0100\n"
        b"Subject: Re: [blog] Hei\nMessage-ID: <p2@example.net>\nIn-Reply-To: <p1@example.net>\n"
        b"References: <p1@example.net>\n\nSvar.\n")
    path = tmp_path / "2018-March.txt.gz"
    path.write_bytes(gzip.compress(pipermail))
    report = import_mbox(app, "blog", path)
    assert report.outcomes == {"post": 1, "comment": 1}
    def q(session):
        return session.execute(select(Post.author_name, Post.author_address, Post.text)).one()
    name, address, body = app.db.call(q)
    assert (name, address) == ("Kari Nordmann", "kari@example.net")
    assert "From escaped." in body  # mboxrd: one '>' removed
    # export --format mbox, import into a fresh database: the same threads
    from listserver.export import write_mbox
    out = tmp_path / "export.mbox"
    with open(out, "wb") as fh:
        app.db.call(write_mbox, config.lists["blog"], fh)
    assert [m.raw.split(b"\n", 1)[0] for m in read_mbox(out)][0].startswith(b"From: ")
    other = tmp_path / "other"
    from listserver.config import parse_config
    from conftest import config_dict
    import uuid
    db = f"sqlite:///{other / 'db.sqlite3'}" if app.db.is_sqlite else app.config.database_url
    if not app.db.is_sqlite:
        pytest.skip("the round trip uses a second SQLite database")
    app2 = make_app(parse_config(config_dict(db), root=other))
    import_mbox(app2, "blog", out)
    assert parents(app2) == parents(app)
    del uuid


def test_progress_bar_only_on_a_terminal(app, tmp_path) -> None:
    from listserver.importer import Progress, ImportReport
    import io
    out = io.StringIO()
    bar = Progress(1000, out)
    report = ImportReport(read=10)
    bar.update(500, report, force=True)
    bar.done(report)
    assert "50%" in out.getvalue() and out.getvalue().endswith("\n")
    generate(tmp_path / "small.mbox", 30)
    result = subprocess.run(
        [sys.executable, "-m", "listserver.cli", "--config", str(write_cfg(tmp_path, app)),
         "import", "blog", str(tmp_path / "small.mbox")], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "30 message(s) read, 30 new" in result.stdout
    assert "\r[" not in result.stderr  # not a terminal: no bar


def write_cfg(tmp_path: Path, app) -> Path:
    from test_crash import write_config
    return write_config(tmp_path, app.config.database_url)


@pytest.mark.skipif(NOTMUCH is None, reason="notmuch is not installed")
def test_import_threads_as_notmuch_does(app, tmp_path) -> None:
    gen = generate(tmp_path / "gen.mbox", 400, seed=11, late=0.1)
    import_mbox(app, "blog", gen.path)
    ours = parents(app)
    assert counts(app)["held"] == 0
    maildir = tmp_path / "mail"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n, message in enumerate(read_mbox(gen.path)):
        (maildir / "cur" / f"{n}.eml:2,S").write_bytes(message.raw)
    cfg = tmp_path / "notmuch-config"
    cfg.write_text(f"[database]\npath={maildir}\n[user]\nname=t\nprimary_email=t@example.net\n"
                   "[new]\ntags=\n[search]\nexclude_tags=\n")
    env = {**os.environ, "NOTMUCH_CONFIG": str(cfg)}
    subprocess.run([NOTMUCH, "new", "--quiet"], env=env, check=True, capture_output=True)
    shown = json.loads(subprocess.run(
        [NOTMUCH, "show", "--format=json", "--entire-thread=true", "--body=false", "*"],
        env=env, check=True, capture_output=True).stdout)
    theirs: dict[str, str | None] = {}

    def walk(node: list, parent: str | None) -> None:
        message, replies = node
        mid = f"<{message['id']}>"
        theirs[mid] = parent
        for r in replies:
            walk(r, mid)

    for thread in shown:
        for root in thread:
            walk(root, None)
    assert len(theirs) == gen.messages
    assert ours == theirs
    assert ours == gen.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_thousand_messages(app, tmp_path) -> None:
    gen = generate(tmp_path / "big.mbox", 10_000)
    started = time.monotonic()
    report = import_mbox(app, "blog", gen.path)
    took = time.monotonic() - started
    assert report.read == report.stored == 10_000
    c = counts(app)
    assert c["posts"] == gen.threads and c["comments"] == 10_000 - gen.threads
    assert c["held"] == 0 and c["outbox"] == 0
    p = parents(app)
    assert p == gen.parent  # every message in its thread, under its parent
    # a second run doubles nothing
    again = import_mbox(app, "blog", gen.path)
    assert again.stored == 0 and counts(app) == c
    # full render; a search for a word of one comment finds that comment's page
    archive = Archive(app)
    t0 = time.monotonic()
    assert archive.render_full() == gen.threads
    rendered = time.monotonic() - t0
    archive.build_search({"blog"})
    print(f"\nimport {took:.1f}s ({10_000 / took:.0f}/s), re-import {again.seconds:.1f}s, "
          f"full render {rendered:.1f}s")
    target = "<gen7777.5@example.net>"
    def slug_of(session):
        post_id = session.execute(select(Comment.post_id).where(
            Comment.message_id == target)).scalar_one()
        return session.get(Post, post_id).slug
    slug = app.db.call(slug_of)
    page = parse(list_dir(app) / "posts" / f"{slug}.html")
    assert marker(7777) in "".join(page.itertext())
    if CHROMIUM is None:
        return
    with RunningServer(app, roles=("http",)) as server, Browser() as browser:
        browser.open(f"http://127.0.0.1:{server.http_port}/blog/posts/{slug}.html")
        from test_archive_browser import search
        assert search(browser, marker(7777)) in ([f"/blog/posts/{slug}"],
                                                 [f"/blog/posts/{slug}.html"])
