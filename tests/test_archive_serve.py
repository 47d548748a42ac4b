"""The archive while ``serve`` runs: a new comment re-renders only what shows it, right
after its commit; files are replaced whole; a crash is repaired at the next start; the
HTTP server serves the files."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from archivekit import TITLE, deliver, list_dir, parse, post, post_page, render, reply, text
from conftest import POST_SECRET, RunningServer, make_mail, wait_for


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in root.rglob("*")
            if p.is_file() and not any("pagefind" in part for part in p.parts)}


def comments_on_page(app) -> int:
    try:
        return len(parse(post_page(app)).xpath("//li[contains(@class, 'comment')]"))
    except (ValueError, FileNotFoundError):
        return -1


@pytest.fixture
def quiet_server(app, monkeypatch):  # type: ignore[no-untyped-def]
    """A server whose archive task does no periodic catch-up scan during the test (a slow
    machine would otherwise see it re-render pages a comment does not touch)."""
    import listserver.archive as archive
    monkeypatch.setattr(archive, "POLL", 3600.0)
    with RunningServer(app) as running:
        yield running


def test_new_comment_rerenders_only_what_shows_it(quiet_server: RunningServer) -> None:
    server = quiet_server
    app = server.app
    state = app.config.archive_dir / ".listserver-state.json"
    wait_for(state.exists, 20, "the archive task's first render")
    p = make_mail(TITLE, "Status.", sender="Ivar Johansen <ivar@example.no>")
    server.send(p, to=f"blog+post-{POST_SECRET}@lists.example.org")
    c1 = make_mail("Re: " + TITLE, "Flott!", sender="Kirstine <kirstine@example.no>",
                   in_reply_to=p["Message-ID"], references=p["Message-ID"])
    server.send(c1)
    wait_for(lambda: comments_on_page(app) == 1, 20, "the first comment on the page")
    time.sleep(0.5)  # the post and its first comment may be rendered in two passes
    before = snapshot(app.config.archive_dir)
    c2 = make_mail("Re: " + TITLE, "Enig!", sender="Ola <ola@example.no>",
                   in_reply_to=c1["Message-ID"], references=f"{p['Message-ID']} {c1['Message-ID']}")
    server.send(c2)
    started = time.monotonic()
    wait_for(lambda: comments_on_page(app) == 2, 20, "the second comment on the page")
    latency = time.monotonic() - started
    time.sleep(0.3)
    after = snapshot(app.config.archive_dir)
    changed = {k for k in after if before.get(k) != after[k]}
    slug = post_page(app).stem
    from listserver.urls import msgid_segment
    folder = f"blog/msgid/{msgid_segment(c2['Message-ID'])}"
    assert changed == {
        f"blog/posts/{slug}.html", f"blog/posts/{slug}.atom", f"blog/posts/{slug}.json",
        f"blog/posts/{slug}.mbox", "blog/index.html", "blog/feed.atom", "blog/feed.json",
        "blog/page/1.html", f"blog/month/{slug[:7]}.html", f"{folder}/index.html",
        f"{folder}/raw.txt"}, changed
    assert not [k for k in after if ".tmp-" in k]
    assert latency < 5
    # served over HTTP next to the endpoints, the same files
    base = f"http://127.0.0.1:{server.http_port}"
    with urllib.request.urlopen(f"{base}/blog/") as response:
        assert response.status == 200 and b"<!doctype html>" in response.read()
    with urllib.request.urlopen(f"{base}/blog/posts/{slug}.html") as response:
        page = parse(response.read())
    assert text(page.find(".//li[@id='c2']//span[@class='author']")) == "Ola"
    with urllib.request.urlopen(f"{base}/blog/feed.atom") as response:
        assert response.headers["Content-Type"].startswith("application/atom+xml")


def test_a_crash_before_rendering_is_repaired_at_start(app) -> None:
    p = post(app)
    render(app)  # the archive is complete as of now (state file)
    reply(app, p, "Publisert mens ingen tegnet sidene.", "Kari <kari@example.no>")
    assert comments_on_page(app) == 0
    with RunningServer(app):
        wait_for(lambda: comments_on_page(app) == 1, 20, "the catch-up render")


def test_pages_are_replaced_whole(app) -> None:
    p = post(app)
    for n in range(15):
        reply(app, p, f"Kommentar {n} " + "tekst " * 200, "Per <per@example.no>")
    archive = render(app)
    page = post_page(app)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(page.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            archive.render_changes({("blog", 1): False})
    finally:
        stop.set()
        reader.join()
    assert seen and all(s.rstrip().endswith(b"</html>") for s in seen)
    assert not list(page.parent.glob(".tmp-*"))


def test_render_command(tmp_path, app) -> None:
    import subprocess
    import sys
    from test_crash import write_config
    p = post(app)
    reply(app, p, "Hei.", "Kari <kari@example.no>")
    config = write_config(tmp_path, app.config.database_url)
    result = subprocess.run([sys.executable, "-m", "listserver.cli", "--config", str(config),
                             "render", "--full"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "rendered 1 post(s)" in result.stdout
    assert comments_on_page(app) == 1
    assert os.path.exists(list_dir(app) / "index.html")
