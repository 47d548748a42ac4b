"""Child of bench/archive.py: the time from a new comment's commit to its page on disk.

Run: python bench/incremental.py CONFIG COUNT. For COUNT random posts of a fully rendered
archive, a reply goes through the normal path (stored, processed, committed), then the
archive renders what it changed (``Archive.render_changes``, as serve does after a commit)
and the comment is checked on the post page. Also COUNT new posts. One more of each goes
first, uncounted: serve compiles its templates once. Prints JSON.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import select

from listserver.app import App
from listserver.archive import Archive
from listserver.config import load_config
from listserver.intake import Incoming, store_incoming
from listserver.models import Message, Post
from listserver.plugins import install
from listserver.process import process_id


def main() -> None:
    app = App(load_config(Path(sys.argv[1])))
    install(app)
    count = int(sys.argv[2])
    archive = Archive(app)
    ids = app.db.call(lambda s: list(s.execute(select(Post.id, Post.message_id, Post.slug)
                                               .where(Post.state == "published")).all()))
    rnd = random.Random(7)
    run = int(time.time() * 1000)   # Message-IDs new in every run
    comment_ms: list[float] = []
    post_ms: list[float] = []
    for n in range(-1, count):  # the first of each warms up (templates compiled once)
        post_id, message_id, slug = rnd.choice(ids)
        word = f"inkrementell{n + 1:04d}x"
        raw = (f"From: Kari <kari{n + 1}@example.net>\r\nTo: blog@lists.example.org\r\n"
               f"Subject: Re: innlegg\r\nMessage-ID: <inc{n + 1}.{run}@example.net>\r\n"
               f"In-Reply-To: {message_id}\r\nReferences: {message_id}\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n\r\nNy kommentar {word}.\r\n")
        took = publish_and_render(app, archive, raw, "blog@lists.example.org", post_id, False,
                                  f"posts/{slug}.html", word)
        if n >= 0:
            comment_ms.append(took)
        word = f"nyttinnlegg{n + 1:04d}x"
        raw = (f"From: Ivar <ivar@example.no>\r\nTo: blog@lists.example.org\r\n"
               f"Subject: Nytt innlegg {n + 1}\r\nMessage-ID: <newpost{n + 1}.{run}@example.no>\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n\r\nEt nytt innlegg {word}.\r\n")
        took = publish_and_render(app, archive, raw, "blog+post-benchsecret@lists.example.org",
                                  None, True, "index.html", word)
        if n >= 0:
            post_ms.append(took)
    print(json.dumps({"comment_median": statistics.median(comment_ms),
                      "comment_max": max(comment_ms),
                      "post_median": statistics.median(post_ms), "post_max": max(post_ms)}))


def publish_and_render(app: App, archive: Archive, raw: str, to: str, post_id: int | None,
                       new: bool, page: str, word: str) -> float:
    [pk] = app.db.call(store_incoming, [Incoming("blog", raw.encode(), "x@example.net", [to],
                                                 "inject")], app.config.domain)
    process_id(app, pk)   # committed here: the comment or post is published

    def published(session):  # type: ignore[no-untyped-def]
        message = session.get(Message, pk)
        assert message.outcome in ("comment", "post"), (message.outcome, message.reason)
        if post_id is not None:
            return post_id
        return session.execute(select(Post.id).where(Post.message_pk == pk)).scalar_one()
    target = app.db.call(published)
    started = time.perf_counter()
    archive.render_changes({("blog", target): new})
    took = (time.perf_counter() - started) * 1000
    text = (app.config.archive_dir / "blog" / page).read_text()
    assert word in text, f"{word} not in {page}"
    return took


if __name__ == "__main__":
    main()
