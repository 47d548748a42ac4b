"""Atom (RFC 4287) and JSON Feed 1.1 documents from feed entries.

Atom comes from the template ``archive/feed.atom.xml`` (overridable like every page);
JSON Feed is built here, since JSON is data rather than markup.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass
class FeedEntry:
    id: str
    url: str
    title: str
    published: datetime
    author: str
    content: str              # sanitised, privacy-filtered HTML source (escaped in Atom)
    email: str = ""           # only when the list shows addresses
    replies_url: str = ""     # Atom threading extension (RFC 4685): the comments feed
    replies: int = 0


@dataclass
class Feed:
    id: str
    title: str
    subtitle: str
    language: str
    home_url: str
    atom_url: str
    json_url: str
    updated: datetime
    entries: list[FeedEntry]


def json_feed(feed: Feed, iso: Callable[[datetime], str]) -> str:
    items = []
    for e in feed.entries:
        author = {"name": e.author, **({"url": f"mailto:{e.email}"} if e.email else {})}
        item: dict[str, object] = {"id": e.id, "url": e.url, "title": e.title, "content_html": e.content,
                "date_published": iso(e.published), "authors": [author]}
        items.append(item)
    doc = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": feed.title,
        "home_page_url": feed.home_url,
        "feed_url": feed.json_url,
        "description": feed.subtitle,
        "language": feed.language,
        "authors": [{"name": feed.title}],
        "items": items,
    }
    # One line: the C encoder (indenting takes the pure-Python one, several times slower).
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
