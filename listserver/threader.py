"""Where a reply belongs.

A reply's parent is the first of: its In-Reply-To, if known; the last known Message-ID in
its References; the thread token in the address it was sent to. "Known" means published
(a post or a comment of this list). A reply placed by an older reference remembers the
In-Reply-To it really answers (``wanted``) and moves there when that message arrives.
Self-references are ignored and re-attaching never makes a cycle.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .addresses import ListAddress
from .models import Comment, Post
from .parse import ParsedMessage

SUBJECT_PREFIX = re.compile(r"^\s*((re|sv|aw|vs|fw|fwd|vb|antw)\s*(\[\d+\])?\s*:\s*)+",
                            re.IGNORECASE)


@dataclass
class Target:
    """A published message that can be replied to."""

    post: Post
    comment: Comment | None  # None: the post itself

    @property
    def message_id(self) -> str:
        return self.comment.message_id if self.comment else self.post.message_id

    @property
    def parent_for_child(self) -> str | None:
        """The ``parent_message_id`` a reply to this target stores (None under the post)."""
        return self.comment.message_id if self.comment else None


@dataclass
class Placement:
    target: Target | None
    wanted: str | None      # the In-Reply-To we could not find yet
    how: str                # in-reply-to, references, token, none


def new_thread_token() -> str:
    return secrets.token_hex(8)


def is_reply(parsed: ParsedMessage, address: ListAddress | None) -> bool:
    own = parsed.message_id
    ids = [i for i in [parsed.in_reply_to, *parsed.references] if i and i != own]
    return bool(ids) or (address is not None and address.command == "reply")


PUBLISHED_POST = select(Post).where(
    Post.list_name == bindparam("list_name"), Post.message_id == bindparam("message_id"),
    Post.state == "published")
COMMENT = select(Comment).where(
    Comment.list_name == bindparam("list_name"), Comment.message_id == bindparam("message_id"))


def lookup(session: Session, list_name: str, message_id: str) -> Target | None:
    params = {"list_name": list_name, "message_id": message_id}
    post = session.execute(PUBLISHED_POST, params).scalar_one_or_none()
    if post is not None:
        return Target(post, None)
    comment = session.execute(COMMENT, params).scalar_one_or_none()
    if comment is not None and comment.post.state == "published":
        return Target(comment.post, comment)
    return None


def lookup_token(session: Session, list_name: str, token: str) -> Target | None:
    post = session.execute(select(Post).where(
        Post.list_name == list_name, Post.thread_token == token,
        Post.state == "published")).scalar_one_or_none()
    if post is not None:
        return Target(post, None)
    comment = session.execute(select(Comment).where(
        Comment.list_name == list_name, Comment.thread_token == token)).scalar_one_or_none()
    return Target(comment.post, comment) if comment is not None else None


def place(session: Session, list_name: str, own_id: str, parsed: ParsedMessage,
          address: ListAddress | None) -> Placement:
    irt = parsed.in_reply_to if parsed.in_reply_to != own_id else None
    if irt:
        target = lookup(session, list_name, irt)
        if target is not None:
            return Placement(target, None, "in-reply-to")
    refs = [r for r in parsed.references if r != own_id]
    # The real parent: the In-Reply-To, else the last reference (re-attached when it comes).
    real = irt or (refs[-1] if refs else None)
    for ref in reversed(refs):
        if ref == irt:
            continue
        target = lookup(session, list_name, ref)
        if target is not None:
            return Placement(target, real if real != ref else None, "references")
    if address is not None and address.command == "reply" and address.token:
        target = lookup_token(session, list_name, address.token)
        if target is not None:
            return Placement(target, irt, "token")
    return Placement(None, real, "none")


def ancestors(session: Session, comment: Comment) -> set[str]:
    """Message-IDs above a comment, up to the post (bounded: cycles cannot loop)."""
    seen: set[str] = set()
    parent = comment.parent_message_id
    while parent and parent not in seen and len(seen) < 10_000:
        seen.add(parent)
        above = session.execute(select(Comment.parent_message_id).where(
            Comment.list_name == comment.list_name,
            Comment.message_id == parent)).scalar_one_or_none()
        parent = above
    return seen


def normalised_subject(subject: str) -> str:
    return re.sub(r"\s+", " ", SUBJECT_PREFIX.sub("", subject or "")).strip().lower()


def subject_hint(session: Session, list_name: str, subject: str) -> str | None:
    """For a "Re:" without threading headers: the post it may answer, as a moderator hint."""
    if not SUBJECT_PREFIX.match(subject or ""):
        return None
    wanted = normalised_subject(subject)
    if not wanted:
        return None
    posts = session.execute(select(Post).where(
        Post.list_name == list_name, Post.state == "published").order_by(
        Post.date.desc()).limit(500)).scalars()
    for post in posts:
        if normalised_subject(post.title) == wanted:
            return f"reply to post {post.id} {post.message_id} ({post.title!r})?"
    return None
