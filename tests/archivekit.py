"""Helpers for the archive tests: publish mail without SMTP, render, parse pages as HTML5."""

from __future__ import annotations

import email.utils
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import html5lib
from lxml import etree

from listserver.app import App
from listserver.archive import Archive
from listserver.intake import Incoming, store_incoming
from listserver.models import Message
from listserver.process import process_id

from conftest import POST_SECRET, make_mail

AUTHOR = "Ivar Johansen <ivar@example.no>"
TITLE = "Sosialt entreprenørskap: Status i Oslo kommune"


def deliver(app: App, raw: bytes | EmailMessage, to: str | None = None,
            list_name: str = "blog", sender: str = "sender@example.net") -> Message:
    data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
    to = to or f"{list_name}@lists.example.org"
    [pk] = app.db.call(store_incoming, [Incoming(list_name, data, sender, [to], "smtp")],
                       app.config.domain)
    process_id(app, pk)
    return app.db.call(lambda s: s.get(Message, pk))


def post(app: App, subject: str = TITLE, body: str = "Status for arbeidet.",
         list_name: str = "blog", **kw: Any) -> EmailMessage:
    msg = make_mail(subject, body, sender=AUTHOR, to=f"{list_name}@lists.example.org", **kw)
    message = deliver(app, msg, f"{list_name}+post-{POST_SECRET}@lists.example.org",
                      list_name)
    assert message.outcome == "post", message.reason
    return msg


def reply(app: App, parent: EmailMessage, body: str, sender: str, list_name: str = "blog",
          date: datetime | None = None, raw: bytes | None = None) -> EmailMessage:
    refs = (parent.get("References", "") + " " + parent["Message-ID"]).strip()
    msg = make_mail("Re: " + str(parent["Subject"]).removeprefix("Re: "), body, sender=sender,
                    to=f"{list_name}@lists.example.org", in_reply_to=parent["Message-ID"],
                    references=refs)
    if date is not None:
        del msg["Date"]
        msg["Date"] = email.utils.format_datetime(date)
    message = deliver(app, raw if raw is not None else msg, list_name=list_name)
    assert message.outcome == "comment", message.reason
    return msg


def render(app: App, search: bool = False) -> Archive:
    archive = Archive(app)
    archive.render_full()
    if search:
        archive.build_search(set(app.config.lists))
    return archive


def parse(path: Path | bytes | str) -> etree._Element:
    """An HTML5 document as an lxml tree (html5lib, strict: a parse error fails the test)."""
    data = path.read_bytes() if isinstance(path, Path) else path
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False,
                                 tree=html5lib.getTreeBuilder("lxml"))
    return parser.parse(data).getroot()


def text(el: etree._Element) -> str:
    return " ".join("".join(el.itertext()).split())


def list_dir(app: App, name: str = "blog") -> Path:
    return app.config.archive_dir / name


def post_page(app: App, name: str = "blog") -> Path:
    [page] = list((list_dir(app, name) / "posts").glob("*.html"))
    return page
