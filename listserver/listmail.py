"""Composing list mail: a post or a comment as the mail every subscriber receives.

``compose`` renders a post or comment once: the common header block and a
multipart/alternative body (text first, then HTML from ``templates/email/list_mail.LANG.*``
with the CSS inlined by css-inline), both quoted-printable. ``ListMail.personalise`` then
makes each subscriber's copy by splicing bytes: the ``To`` and ``List-Unsubscribe`` lines,
and the footer lines that carry the unsubscribe link (the only body lines that differ; they
are kept apart from the pre-encoded rest and encoded per copy). A copy costs microseconds,
so a post to 100,000 subscribers is rendered once, not 100,000 times.

Headers: From is ``"Author via List Title" <NAME@domain>`` (the list's own domain, so DMARC
passes when we sign), Reply-To the post's or comment's thread address ``NAME+reply-TOKEN@``,
Message-ID the post's or comment's own (replies thread on it), In-Reply-To/References on
comments, the RFC 2369 ``List-*`` headers, ``Archived-At``, RFC 8058 one-click unsubscribe
and ``Precedence: list``. A message stays under ``MAX_SIZE`` (Gmail clips at about 102 KB):
longer content is cut, with a link to read the rest in the archive.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import html as htmllib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from typing import TYPE_CHECKING, Any

import css_inline
from babel.dates import format_datetime
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from .addresses import list_address
from .config import ListConfig
from .htmlsafe import sanitize_html
from .models import Comment, Post
from .urls import comment_url, list_url, post_url

if TYPE_CHECKING:
    from .app import App

PLACEHOLDER = "xx-unsubscribe-url-xx"
MAX_SIZE = 95_000
_POLICY = email.policy.SMTP
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)
DATE_FORMATS = {"nb": "d. MMMM y 'kl.' HH:mm", "en": "d MMMM y 'at' HH:mm"}


@dataclass(frozen=True)
class Slot:
    """A body line that carries the unsubscribe link, encoded for each copy."""

    line: str
    html: bool


@dataclass(frozen=True)
class ListMail:
    head: bytes                          # the common header lines
    body: tuple[bytes | Slot, ...]       # from the blank line after the headers to the end
    list_name: str

    def personalise(self, recipient: str, name: str, unsubscribe_url: str,
                    unsubscribe_mailto: str) -> bytes:
        parts = [_to_header(recipient, name),
                 f"List-Unsubscribe: <{unsubscribe_url}>,\r\n <{unsubscribe_mailto}>\r\n"
                 "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n".encode("ascii"),
                 self.head]
        escaped = htmllib.escape(unsubscribe_url)
        for piece in self.body:
            if isinstance(piece, bytes):
                parts.append(piece)
            else:
                value = escaped if piece.html else unsubscribe_url
                parts.append(_qp(piece.line.replace(PLACEHOLDER, value) + "\n"))
        return b"".join(parts)


def _to_header(recipient: str, name: str) -> bytes:
    try:
        value = email.utils.formataddr((name[:100].replace("\n", " "), recipient))
        return f"To: {value}\r\n".encode("ascii")
    except (UnicodeError, ValueError):
        return f"To: <{recipient}>\r\n".encode("ascii", "replace")


def _qp(text: str) -> bytes:
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _header(name: str, value: str) -> bytes:
    return _POLICY.header_factory(name, value).fold(policy=_POLICY).encode("ascii")


def _raw_header(name: str, ids: list[str]) -> bytes:
    """Message-ID style headers, written as they are (folded between ids)."""
    return (name + ": " + "\r\n ".join(ids) + "\r\n").encode("ascii", "replace")


def _encode_body(text: str, html: bool) -> list[bytes | Slot]:
    out: list[bytes | Slot] = []
    run: list[str] = []
    for line in text.splitlines():
        if PLACEHOLDER in line:
            if run:
                out.append(_qp("\n".join(run) + "\n"))
                run = []
            out.append(Slot(line, html))
        else:
            run.append(line)
    if run:
        out.append(_qp("\n".join(run) + "\n"))
    return out


def paragraphs(text: str) -> Markup:
    """Plain text as HTML paragraphs (escaped), single newlines as line breaks."""
    blocks = [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text.strip()) if b.strip()]
    return Markup("\n".join(
        "<p>" + "<br>\n".join(htmllib.escape(line) for line in block.split("\n")) + "</p>"
        for block in blocks))


def cut_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    at = max(cut.rfind("\n\n"), cut.rfind(" "))
    return (cut[:at] if at > limit // 2 else cut).rstrip() + " …"


def cut_html(html: str, limit: int) -> str:
    if len(html) <= limit:
        return html
    cut = html[:limit]
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[:cut.rfind("<")]
    return sanitize_html(cut + " …")  # the sanitiser's HTML5 parser closes open tags


def format_date(value: datetime, lst: ListConfig) -> str:
    return format_datetime(value, DATE_FORMATS.get(lst.language, DATE_FORMATS["en"]),
                           tzinfo=lst.tz, locale=lst.language)


def _references(session: Session, post: Post, comment: Comment) -> list[str]:
    """The thread above a comment, oldest first: the post, then the comments replied to."""
    chain: list[str] = []
    parent = comment.parent_message_id
    while parent and parent not in chain and len(chain) < 20:
        chain.append(parent)
        parent = session.execute(select(Comment.parent_message_id).where(
            Comment.list_name == comment.list_name,
            Comment.message_id == parent)).scalar_one_or_none()
    return [post.message_id, *reversed(chain)]


def compose(app: App, session: Session, lst: ListConfig, post: Post,
            comment: Comment | None = None) -> ListMail:
    config = app.config
    item = comment or post
    author = item.author_name or item.author_address.partition("@")[0]
    if comment is not None:
        url = comment_url(config, lst.name, post.slug, comment.number)
        subject = comment.subject or f"Re: {post.title}"
        text, html = comment.text, None
    else:
        url = post_url(config, lst.name, post.slug)
        subject = post.title
        text, html = post.text, post.html
    reply = list_address(config, lst.name, "reply", item.thread_token)
    head = [
        _header("From", str(Address(f"{author} via {lst.title}",
                                    addr_spec=list_address(config, lst.name)))),
        _header("Reply-To", str(Address(lst.title, addr_spec=reply))),
        _header("Subject", subject),
        _header("Date", email.utils.format_datetime(item.date.astimezone(lst.tz))),
        _raw_header("Message-ID", [item.message_id]),
    ]
    if comment is not None:
        refs = _references(session, post, comment)
        head += [_raw_header("In-Reply-To", [refs[-1]]), _raw_header("References", refs)]
    head += [
        _header("List-Id", f"{lst.title} <{lst.name}.{config.domain}>"),
        f"List-Post: <mailto:{list_address(config, lst.name)}>\r\n".encode(),
        f"List-Help: <mailto:{list_address(config, lst.name, 'help')}>\r\n".encode(),
        f"List-Subscribe: <mailto:{list_address(config, lst.name, 'subscribe')}>\r\n".encode(),
        f"List-Archive: <{list_url(config, lst.name)}>\r\n".encode(),
        f"Archived-At: <{url}>\r\n".encode(),
        b"Precedence: list\r\nX-Auto-Response-Suppress: All\r\nMIME-Version: 1.0\r\n",
    ]
    boundary = "=_ls" + secrets.token_hex(12)  # "=_" never occurs in quoted-printable text
    head.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode())
    values: dict[str, Any] = dict(
        lst=lst, config=config, post=post, comment=comment, author=author, subject=subject,
        date=format_date(item.date, lst), url=url, post_url=post_url(config, lst.name,
                                                                      post.slug),
        archive_url=list_url(config, lst.name), reply_address=reply,
        unsubscribe_url=PLACEHOLDER)
    limit: int | None = None
    content_length = len(html or text)
    for _ in range(8):
        body = _render(app, lst, values, text, html, limit, boundary)
        size = sum(len(b) if isinstance(b, bytes) else len(b.line) + 200 for b in body)
        size += sum(len(h) for h in head) + 600  # + the personal headers
        if size <= MAX_SIZE or (limit or content_length) < 200:
            break
        limit = int((limit or content_length) * MAX_SIZE / size * 0.9)
    return ListMail(b"".join(head), tuple(body), lst.name)


def _render(app: App, lst: ListConfig, values: dict[str, Any], text: str, html: str | None,
            limit: int | None, boundary: str) -> list[bytes | Slot]:
    truncated = limit is not None and len(html or text) > limit
    body_text = cut_text(text, limit) if limit is not None else text
    if html:
        body_html = Markup(cut_html(html, limit) if limit is not None else html)
    else:
        body_html = paragraphs(body_text)
    lang = lst.language
    plain = app.templates.get_template(f"email/list_mail.{lang}.txt").render(
        body_text=body_text.rstrip(), truncated=truncated, **values)
    rich = app.templates.get_template(f"email/list_mail.{lang}.html").render(
        body_html=body_html, truncated=truncated, **values)
    rich = _INLINER.inline(rich)
    part = "Content-Type: text/{}; charset=\"utf-8\"\r\n" \
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    return [f"\r\n--{boundary}\r\n{part.format('plain')}".encode(),
            *_encode_body(plain, html=False),
            f"\r\n--{boundary}\r\n{part.format('html')}".encode(),
            *_encode_body(rich, html=True),
            f"\r\n--{boundary}--\r\n".encode()]
