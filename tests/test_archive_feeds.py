"""Atom feeds read by a real feed reader (feedparser), checked against RFC 4287's rules,
and JSON Feed 1.1."""

from __future__ import annotations

import json
import re
from datetime import datetime
from urllib.parse import urlsplit

import feedparser
from lxml import etree

from archivekit import TITLE, list_dir, post, render, reply

ATOM = "{http://www.w3.org/2005/Atom}"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")


def check_atom(data: bytes) -> etree._Element:
    """The MUSTs of RFC 4287 that a generator can get wrong."""
    feed = etree.fromstring(data)
    assert feed.tag == f"{ATOM}feed"

    def one(el: etree._Element, name: str) -> etree._Element:
        found = el.findall(f"{ATOM}{name}")
        assert len(found) == 1, f"{name}: {len(found)}"
        return found[0]

    for el in (feed, *feed.findall(f"{ATOM}entry")):
        assert urlsplit(one(el, "id").text).scheme in ("http", "https", "urn", "tag")
        assert one(el, "title").text
        assert RFC3339.match(one(el, "updated").text)
        alternates = [(l.get("type"), l.get("hreflang")) for l in el.findall(f"{ATOM}link")
                      if l.get("rel", "alternate") == "alternate"]
        assert len(alternates) == len(set(alternates))
        for link in el.findall(f"{ATOM}link"):
            assert urlsplit(link.get("href")).scheme in ("http", "https")
    assert feed.find(f"{ATOM}author/{ATOM}name").text  # so entries need none of their own
    assert [l for l in feed.findall(f"{ATOM}link") if l.get("rel") == "self"]
    for entry in feed.findall(f"{ATOM}entry"):
        content = one(entry, "content")
        assert content.get("type") == "html" and len(content) == 0  # escaped, not inline XML
        assert RFC3339.match(one(entry, "published").text)
        for author in entry.findall(f"{ATOM}author"):
            assert one(author, "name").text
    return feed


def test_feeds_of_posts_and_comments(app) -> None:
    p = post(app, body="Status for arbeidet. Mer på https://example.org/x")
    c1 = reply(app, p, "Flott innlegg!", "Kirstine <kirstine@example.no>")
    reply(app, c1, "Enig.", "Ola <ola@example.no>")
    post(app, subject="Et annet innlegg", body="Kort.")
    render(app)
    d = list_dir(app)
    data = (d / "feed.atom").read_bytes()
    check_atom(data)
    parsed = feedparser.parse(data)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title == "Sosialt entreprenørskap"
    assert parsed.feed.language == "nb"
    assert [e.title for e in parsed.entries] == ["Et annet innlegg", TITLE]
    first = parsed.entries[1]
    assert first.link.startswith("http://archive.test/blog/posts/")
    assert first.author == "Ivar Johansen"
    assert "Status for arbeidet" in first.content[0].value
    assert first.content[0].type == "text/html"
    assert [l.href for l in first.links if l.rel == "replies"][0].endswith(".atom")
    assert "ivar@example.no" not in data.decode()

    slug = first.link.rsplit("/", 1)[1][:-5]
    comments = (d / "posts" / f"{slug}.atom").read_bytes()
    check_atom(comments)
    parsed = feedparser.parse(comments)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.feed.title == f"Kommentarer til «{TITLE}»"
    assert [e.title for e in parsed.entries] == ["#2 Ola", "#1 Kirstine"]
    assert [e.link for e in parsed.entries][1].endswith(f"{slug}.html#c1")

    for path in (d / "feed.json", d / "posts" / f"{slug}.json"):
        doc = json.loads(path.read_text())
        assert doc["version"] == "https://jsonfeed.org/version/1.1"
        assert doc["title"] and doc["home_page_url"].startswith("http://archive.test/blog/")
        assert doc["feed_url"] == f"http://archive.test/{path.relative_to(d.parent)}"
        assert doc["language"] == "nb"
        for item in doc["items"]:
            assert item["id"] and item["url"].startswith("http://archive.test/blog/posts/")
            assert item["content_html"] and item["authors"][0]["name"]
            assert datetime.fromisoformat(item["date_published"]).tzinfo is not None


def test_empty_list_has_valid_feeds(app) -> None:
    render(app)
    data = (list_dir(app) / "feed.atom").read_bytes()
    check_atom(data)
    assert feedparser.parse(data).bozo == 0
    assert json.loads((list_dir(app) / "feed.json").read_text())["items"] == []
