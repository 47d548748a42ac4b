"""The twelve messages where well-known threaders disagree, fed live in file order.

Our answer for each is the table in DESIGN.md (Threading). 01 and 07 are new threads by
authors, sent to the secret posting address; everything else goes to the post address.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from listserver.config import parse_config
from listserver.models import Message

from conftest import CORPUS, POST_SECRET, RunningServer, config_dict

THREADING = CORPUS / "threading"


@pytest.fixture
def corpus_server(tmp_path: Path, database_url: str, make_app):
    data = config_dict(database_url, blog={"authors": ["alice@example.org",
                                                        "gina@example.org"]})
    app = make_app(parse_config(data, root=tmp_path))
    with RunningServer(app) as server:
        yield server


def feed(server: RunningServer, name: str) -> None:
    raw = (THREADING / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    to = (f"blog+post-{POST_SECRET}@lists.example.org" if name in ("01.eml", "07.eml")
          else "blog@lists.example.org")
    server.send(raw, to=to)
    server.idle()


def held(server: RunningServer) -> dict[str, Message]:
    rows = server.app.db.call(lambda s: s.execute(select(Message).where(
        Message.state == "held").order_by(Message.id)).scalars().all())
    return {f"{r.message_id}|{r.from_address}": r for r in rows}


def comments(server: RunningServer) -> dict[str, dict]:
    out = {}
    for post in server.export()["posts"]:
        for c in post["comments"]:
            out[c["message_id"]] = {**c, "post": post["message_id"]}
    return out


@pytest.mark.skipif(not THREADING.exists(), reason="shared corpus not present")
def test_threading_corpus_live(corpus_server: RunningServer) -> None:
    s = corpus_server
    for name in ["01.eml", "02.eml", "03.eml", "04.eml", "05.eml"]:
        feed(s, name)
    c = comments(s)
    assert c["<reply1@example.org>"]["parent"] is None                     # 02 under 01
    assert c["<reply2@example.org>"]["parent"] == "<reply1@example.org>"   # 03 under 02
    assert c["<reply3@example.org>"]["parent"] is None                     # 04 under 01
    # 05: In-Reply-To unknown, last known reference is 01: under 01 for now.
    assert c["<reply4@example.org>"]["parent"] is None
    assert c["<reply4@example.org>"]["post"] == "<root@example.org>"
    number_05 = c["<reply4@example.org>"]["number"]

    feed(s, "06.eml")     # "Re:" subject, no headers: held with a hint
    h = held(s)["<orphan@example.org>|frank@example.org"]
    assert h.hint and "<root@example.org>" in h.hint

    feed(s, "07.eml")     # unrelated: a post
    feed(s, "08.eml")     # 05's parent arrives late
    c = comments(s)
    assert c["<missing@example.org>"]["parent"] is None
    assert c["<reply4@example.org>"]["parent"] == "<missing@example.org>"
    assert c["<reply4@example.org>"]["number"] == number_05

    feed(s, "09.eml")
    feed(s, "10.eml")     # naming each other: both held, nothing published
    h = held(s)
    assert "<loopA@example.org>|ivan@example.org" in h
    assert "<loopB@example.org>|judy@example.org" in h

    feed(s, "11.eml")     # In-Reply-To (known) wins over References
    c = comments(s)
    assert c["<conflict@example.org>"]["post"] == "<other@example.org>"
    assert c["<conflict@example.org>"]["parent"] is None

    feed(s, "12.eml")     # 03's Message-ID, other content: held, 03 untouched
    h = held(s)["<reply2@example.org>|mallory@example.org"]
    assert "duplicate Message-ID" in h.reason
    c = comments(s)
    assert c["<reply2@example.org>"]["author"]["name"] == "Carol"

    posts = [p["message_id"] for p in s.export()["posts"]]
    assert posts == ["<root@example.org>", "<other@example.org>"]
    numbers = [x["number"] for x in s.export()["posts"][0]["comments"]]
    assert numbers == [1, 2, 3, 4, 5]


@pytest.mark.skipif(not THREADING.exists(), reason="shared corpus not present")
def test_approving_one_of_a_naming_pair_never_makes_a_cycle(corpus_server, tmp_path) -> None:
    from listserver.moderation import approve
    from listserver.worker import drain
    s = corpus_server
    feed(s, "09.eml")
    feed(s, "10.eml")
    loop_a = held(s)["<loopA@example.org>|ivan@example.org"]
    s.app.db.call(approve, loop_a.id)
    s.app.wake_worker()
    s.idle()
    drain(s.app)
    posts = s.export()["posts"]
    assert [p["message_id"] for p in posts] == ["<loopA@example.org>"]
    assert [(c["message_id"], c["parent"]) for c in posts[0]["comments"]] == [
        ("<loopB@example.org>", None)]
