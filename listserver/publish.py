"""Turning an accepted message into a post or a numbered comment, and what follows.

After a message is published, comments that wanted it as their parent move under it, and
held replies that waited for it are queued again; the registered ``Hooks`` (outbound
fan-out, archive refresh) hear about it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from .models import Comment, Message, Post, utcnow
from .parse import ParsedMessage
from .threader import Target, ancestors, new_thread_token

log = logging.getLogger("listserver.publish")


@dataclass
class Hooks:
    """Callbacks run inside the publishing transaction (they add rows, never send)."""

    post_published: list[Callable[[Session, Post], None]] = field(default_factory=list)
    comment_published: list[Callable[[Session, Comment], None]] = field(default_factory=list)
    # The application's clock (tests inject one): publication times come from it.
    clock: Callable[[], datetime] = utcnow


def message_date(parsed: ParsedMessage, received: datetime) -> datetime:
    """The Date header when it is sane, else the time we received the message."""
    date = parsed.date
    if date is None or date > received + timedelta(days=1) or date.year < 1990:
        return received
    return date


def slugify(text: str, max_length: int = 60) -> str:
    text = text.replace("ø", "o").replace("Ø", "O").replace("æ", "ae").replace("Æ", "AE")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()
    return text[:max_length].rstrip("-") or "post"


def unique_slug(session: Session, list_name: str, date: datetime, title: str) -> str:
    base = f"{date:%Y-%m-%d}-{slugify(title)}"
    slug, n = base, 1
    while session.execute(select(Post.id).where(
            Post.list_name == list_name, Post.slug == slug)).first() is not None:
        n += 1
        slug = f"{base}-{n}"
    return slug


def create_post(session: Session, hooks: Hooks, message: Message, parsed: ParsedMessage,
                message_id: str, *, state: str = "published",
                publish_at: datetime | None = None) -> Post:
    date = message_date(parsed, message.received_at)
    title = parsed.subject or "(no subject)"
    post = Post(
        list_name=message.list_name, message_pk=message.id, message_id=message_id,
        thread_token=new_thread_token(), slug=unique_slug(session, message.list_name, date,
                                                          title),
        title=title, author_name=parsed.from_name, author_address=parsed.from_address,
        date=date, text=parsed.text, html=parsed.html, state=state, publish_at=publish_at,
        published_at=hooks.clock() if state == "published" else None, comment_count=0)
    session.add(post)
    session.flush()
    if state == "published":
        after_publish(session, hooks, message.list_name, message_id, Target(post, None))
        for hook in hooks.post_published:
            hook(session, post)
    log.info("post %s published in %s: %s", message_id, message.list_name, title)
    return post


def publish_scheduled(session: Session, hooks: Hooks, post: Post, now: datetime) -> None:
    """A scheduled post's time has come: it appears with that date and is announced."""
    post.state = "published"
    post.date = post.publish_at or now
    post.published_at = now
    post.slug = unique_slug(session, post.list_name, post.date, post.title)
    session.flush()
    after_publish(session, hooks, post.list_name, post.message_id, Target(post, None))
    for hook in hooks.post_published:
        hook(session, post)
    log.info("scheduled post %s published in %s", post.message_id, post.list_name)


PUBLISH_LINE = re.compile(r"\A\s*Publish:\s*(\d{4}-\d{2}-\d{2})[ T](\d{1,2}:\d{2})\s*(\n|\Z)",
                          re.IGNORECASE)


def scheduled_time(text: str, tz: tzinfo) -> tuple[datetime, str] | None:
    """The time of a leading ``Publish: YYYY-MM-DD HH:MM`` line (in ``tz``) and the text
    without it; None if there is no such line or it names no real time."""
    match = PUBLISH_LINE.match(text)
    if match is None:
        return None
    try:
        local = datetime.fromisoformat(f"{match.group(1)} {match.group(2).zfill(5)}")
    except ValueError:
        return None
    return local.replace(tzinfo=tz), text[match.end():].lstrip("\n")


# Core statements on the tables (not the ORM's bulk UPDATE, which costs several times more
# per call), built once.
_posts, _messages = Post.__table__, Message.__table__
NEXT_NUMBER = (update(_posts).where(_posts.c.id == bindparam("post_id"))
               .values(comment_count=_posts.c.comment_count + 1)
               .returning(_posts.c.comment_count))


def create_comment(session: Session, hooks: Hooks, message: Message, parsed: ParsedMessage,
                   message_id: str, target: Target, wanted: str | None) -> Comment:
    post = target.post
    # One atomic statement numbers the comment: concurrent workers (PostgreSQL) queue on
    # the post's row, and nobody reads a count that another transaction is changing.
    number = session.execute(NEXT_NUMBER, {"post_id": post.id}).scalar_one()
    set_committed_value(post, "comment_count", number)
    comment = Comment(
        list_name=message.list_name, post_id=post.id, number=number,
        message_pk=message.id, message_id=message_id, thread_token=new_thread_token(),
        parent_message_id=target.parent_for_child, wanted_parent=wanted,
        author_name=parsed.from_name, author_address=parsed.from_address,
        date=message_date(parsed, message.received_at), subject=parsed.subject,
        text=parsed.new_text or parsed.text, quoted=parsed.quoted,
        signature=parsed.signature, html=parsed.html, published_at=hooks.clock())
    session.add(comment)
    session.flush()
    after_publish(session, hooks, message.list_name, message_id, Target(post, comment))
    for hook in hooks.comment_published:
        hook(session, comment)
    log.info("comment #%d %s on post %s", comment.number, message_id, post.message_id)
    return comment


ORPHANS = select(Comment).where(Comment.list_name == bindparam("list_name"),
                                Comment.wanted_parent == bindparam("message_id"))
RELEASE_WAITING = (update(_messages).where(
    _messages.c.list_name == bindparam("held_list"), _messages.c.state == "held",
    _messages.c.waiting_for == bindparam("parent_id"))
    .values(state="queued", waiting_for=None, outcome=None).returning(_messages.c.id))


def after_publish(session: Session, hooks: Hooks, list_name: str, message_id: str,
                  target: Target) -> None:
    """Re-attach comments that wanted this message, and release held replies waiting for it."""
    params = {"list_name": list_name, "message_id": message_id}
    orphans = session.execute(ORPHANS, params).scalars().all()
    for orphan in orphans:
        orphan.wanted_parent = None
        if orphan.post_id != target.post.id or orphan.message_id == message_id:
            continue  # numbers are per post: a comment never changes post
        if target.comment is not None and orphan.message_id in (
                ancestors(session, target.comment) | {target.comment.message_id}):
            continue  # would make a cycle
        orphan.parent_message_id = target.parent_for_child
        log.info("comment %s re-attached under %s", orphan.message_id, message_id)
    released = session.execute(RELEASE_WAITING, {
        "held_list": list_name, "parent_id": message_id}).scalars().all()
    if released:
        log.info("released held replies %s waiting for %s", released, message_id)
