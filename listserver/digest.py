"""Digests: one mail per period to each ``digest`` subscriber with what is new for them.

Each subscription keeps its own watermark (``digest_since``): a digest holds the posts and
comments published after it and up to the run's cut-off, and the same transaction that
queues the mail moves the watermark to the cut-off. So a new subscriber gets no history,
nobody gets an item twice, a run interrupted half-way simply continues with the
subscribers it had not reached, and a subscriber with nothing new gets nothing.

The cut-off lies ``SETTLE`` before the run: a comment whose transaction was still open
when the run read the database cannot slip behind a watermark; it goes in the next issue.

Every item carries a reply link (``mailto:`` the item's thread address with In-Reply-To),
so a reply from a digest threads under that item. ``digest_format = "mime"`` subscribers
get a MIME ``multipart/digest`` of the original messages instead (RFC 1153's successor).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.charset import QP, Charset
from email.header import Header
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import tokens
from .addresses import list_address
from .archive.views import reply_mailto
from .config import ListConfig
from .listmail import cut_text, format_date
from .models import Comment, DigestRun, Message, Outbox, Post, Subscription
from .urls import comment_url, list_url, post_url, unsubscribe_url

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.digest")

SETTLE = timedelta(minutes=2)
CHUNK = 200
ITEM_TEXT = 3000
UTF8 = Charset("utf-8")
UTF8.body_encoding = QP


@dataclass
class Item:
    kind: str                   # post or comment
    number: int | None
    author: str
    date: str
    text: str
    url: str
    reply: str
    message_pk: int | None


@dataclass
class Thread:
    post: Post
    url: str
    new_post: Item | None = None
    comments: list[Item] = field(default_factory=list)


def items_between(app: App, session: Session, lst: ListConfig, since: datetime,
                  cutoff: datetime) -> list[Thread]:
    """What was published in (since, cutoff], grouped by post, oldest post first."""
    config = app.config
    threads: dict[int, Thread] = {}
    posts = session.execute(select(Post).where(
        Post.list_name == lst.name, Post.state == "published", Post.published_at > since,
        Post.published_at <= cutoff).order_by(Post.date, Post.id)).scalars().all()
    for post in posts:
        threads[post.id] = Thread(post, post_url(config, lst.name, post.slug), new_post=Item(
            "post", None, post.author_name or post.author_address, format_date(post.date, lst),
            cut_text(post.text, ITEM_TEXT), post_url(config, lst.name, post.slug),
            reply_mailto(list_address(config, lst.name, "reply", post.thread_token),
                         post.message_id, post.title), post.message_pk))
    comments = session.execute(select(Comment).join(Post).where(
        Comment.list_name == lst.name, Post.state == "published",
        Comment.published_at > since, Comment.published_at <= cutoff).order_by(
        Comment.post_id, Comment.number)).scalars().all()
    for c in comments:
        thread = threads.get(c.post_id) or threads.setdefault(c.post_id, Thread(
            c.post, post_url(config, lst.name, c.post.slug)))
        thread.comments.append(Item(
            "comment", c.number, c.author_name or c.author_address, format_date(c.date, lst),
            cut_text(c.text, ITEM_TEXT), comment_url(config, lst.name, c.post.slug, c.number),
            reply_mailto(list_address(config, lst.name, "reply", c.thread_token),
                         c.message_id, c.subject or c.post.title), c.message_pk))
    return sorted(threads.values(), key=lambda t: (t.post.date, t.post.id))


def subject(lst: ListConfig, run: DigestRun) -> str:
    if lst.language == "nb":
        return f"[{lst.title}] Sammendrag, årgang {run.volume}, nr. {run.issue}"
    return f"[{lst.title}] Digest, Vol {run.volume}, Issue {run.issue}"


def _headers(app: App, msg: Any, lst: ListConfig, sub: Subscription, run: DigestRun,
             unsub_token: str) -> None:
    config = app.config
    url = unsubscribe_url(config, unsub_token)
    mailto = (f"mailto:{list_address(config, lst.name, 'unsubscribe')}"
              f"?subject=unsubscribe%20{unsub_token}")
    msg["From"] = email.utils.formataddr((str(Header(lst.title, "utf-8")),
                                          list_address(config, lst.name)))
    msg["To"] = email.utils.formataddr((sub.name, sub.address)) if sub.name.isascii() \
        else sub.address
    msg["Subject"] = Header(subject(lst, run), "utf-8")
    msg["Date"] = email.utils.format_datetime(app.now())
    msg["Message-ID"] = f"<digest.{run.id}.{sub.id}@{config.domain}>"
    msg["List-Id"] = f"<{lst.name}.{config.domain}>"
    msg["List-Post"] = f"<mailto:{list_address(config, lst.name)}>"
    msg["List-Archive"] = f"<{list_url(config, lst.name)}>"
    msg["List-Unsubscribe"] = f"<{url}>, <{mailto}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "list"


def compose(app: App, session: Session, lst: ListConfig, sub: Subscription, run: DigestRun,
            threads: list[Thread], unsub_token: str) -> bytes:
    values = dict(lst=lst, run=run, threads=threads, subject=subject(lst, run),
                  unsubscribe_url=unsubscribe_url(app.config, unsub_token),
                  archive_url=list_url(app.config, lst.name),
                  posts=sum(1 for t in threads if t.new_post),
                  comments=sum(len(t.comments) for t in threads))
    if sub.digest_format == "mime":
        msg: Any = MIMEMultipart("mixed")
        intro = app.templates.get_template(f"email/digest_mime.{lst.language}.txt")
        msg.attach(MIMEText(intro.render(**values), "plain", UTF8))  # type: ignore[arg-type]
        parts = MIMEMultipart("digest")
        for pk in [i.message_pk for t in threads for i in
                   ([t.new_post] if t.new_post else []) + t.comments]:
            raw = session.execute(select(Message.raw).where(Message.id == pk)).scalar()
            if raw is not None:
                parts.attach(MIMEMessage(email.message_from_bytes(raw)))
        msg.attach(parts)
    else:
        msg = MIMEMultipart("alternative")
        for ext, subtype in (("txt", "plain"), ("html", "html")):
            body = app.templates.get_template(f"email/digest.{lst.language}.{ext}").render(
                **values)
            msg.attach(MIMEText(body, subtype, UTF8))  # type: ignore[arg-type]
    _headers(app, msg, lst, sub, run, unsub_token)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _new_run(session: Session, lst: ListConfig, now: datetime, cutoff: datetime) -> DigestRun:
    volume = now.astimezone(lst.tz).year
    last = session.execute(select(func.max(DigestRun.issue)).where(
        DigestRun.list_name == lst.name, DigestRun.volume == volume)).scalar() or 0
    run = DigestRun(list_name=lst.name, volume=volume, issue=last + 1, cutoff=cutoff,
                    run_at=now, recipients=0)
    session.add(run)
    session.flush()
    return run


def _due_subscribers(session: Session, list_name: str, cutoff: datetime,
                     after_id: int, lock: bool = False) -> list[Subscription]:
    """Digest subscribers whose watermark is before ``cutoff``. With ``lock`` (a run) the
    rows are locked: a second run at the same time (``digest --now`` during the scheduled
    one) waits for the first to commit and then sees the moved watermarks, instead of
    sending the same items again."""
    query = select(Subscription).where(
        Subscription.list_name == list_name, Subscription.state == "active",
        Subscription.mode == "digest", Subscription.id > after_id,
        (Subscription.digest_since.is_(None)) | (Subscription.digest_since < cutoff)
    ).order_by(Subscription.id).limit(CHUNK)
    return list(session.execute(query.with_for_update() if lock else query).scalars())


def run_digest(app: App, list_name: str) -> int:
    """Queue this period's digests for one list; return how many were queued."""
    lst = app.list(list_name)
    now = app.now()
    cutoff = now - SETTLE
    run_id: int | None = None
    sent, after = 0, 0
    while True:
        with app.db.transaction() as session:
            subs = _due_subscribers(session, lst.name, cutoff, after, lock=True)
            if not subs:
                break
            run = session.get(DigestRun, run_id) if run_id else None
            for sub in subs:
                after = sub.id
                since = sub.digest_since or sub.confirmed_at or sub.created_at
                threads = items_between(app, session, lst, since, cutoff) \
                    if since < cutoff else []
                sub.digest_since = cutoff
                if not threads:
                    continue
                if run is None:
                    run = _new_run(session, lst, now, cutoff)
                    run_id = run.id
                sent += _queue(app, session, lst, sub, run, threads)
    if sent:
        with app.db.transaction() as session:
            run = session.get(DigestRun, run_id)
            if run is not None:
                run.recipients = sent
        app.wake_sender()
        log.info("digest for %s: %d subscriber(s)", lst.name, sent)
    return sent


def _queue(app: App, session: Session, lst: ListConfig, sub: Subscription, run: DigestRun,
           threads: list[Thread]) -> int:
    secret = app.secret
    unsub = tokens.signed(secret, "unsubscribe", lst.name, sub.id, sub.address)
    verp = tokens.signed(secret, "bounces", lst.name, sub.id, sub.address)
    content = compose(app, session, lst, sub, run, threads, unsub)
    session.add(Outbox(
        list_name=lst.name, kind="digest", ref=f"digest:{run.id}", recipient=sub.address,
        envelope_from=list_address(app.config, lst.name, "bounces", verp), content=content,
        state="queued", attempts=0, next_attempt_at=app.now(), created_at=app.now(),
        subscription_id=sub.id))
    return 1


def pending(app: App, list_name: str) -> Iterator[tuple[str, int]]:
    """(address, number of new items) of digest subscribers with something waiting."""
    lst = app.list(list_name)
    cutoff = app.now()
    with app.db.transaction() as session:
        for sub in _due_subscribers(session, lst.name, cutoff, 0):
            since = sub.digest_since or sub.confirmed_at or sub.created_at
            count = sum((1 if t.new_post else 0) + len(t.comments)
                        for t in items_between(app, session, lst, since, cutoff))
            if count:
                yield sub.address, count
