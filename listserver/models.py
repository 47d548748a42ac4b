"""The database schema (SQLAlchemy 2 declarative models).

Every accepted message is a ``Message`` row holding its raw bytes; processing turns it into
a ``Post`` or a ``Comment`` (or holds, discards or parks it). Every outgoing mail is an
``Outbox`` row first. Times are stored in UTC; pages and mail convert them to the list's
time zone. The schema is created and changed only by the Alembic migrations in
``listserver/migrations``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String,
    Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite rowids need INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes in and out, on SQLite (which keeps no zone) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Message(Base):
    """One accepted message for one list: raw bytes first, the processing result after."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("list_name", "message_id", "digest", name="uq_messages_identity"),
        Index("ix_messages_state", "state", "id"),
        Index("ix_messages_list_state", "list_name", "state"),
        Index("ix_messages_waiting_for", "list_name", "waiting_for"),
        Index("ix_messages_message_id", "list_name", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    # The Message-ID header, or a deterministic one made from the digest when it is missing.
    message_id: Mapped[str] = mapped_column(String(500))
    has_message_id: Mapped[bool] = mapped_column(Boolean, default=True)
    digest: Mapped[str] = mapped_column(String(64))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    envelope_from: Mapped[str] = mapped_column(String(500), default="")
    recipients: Mapped[str] = mapped_column(Text, default="")  # space separated RCPT TO
    source: Mapped[str] = mapped_column(String(16), default="smtp")  # smtp, lmtp, inject, import
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # queued -> done | held | failed ; held -> done (approve/reject/release)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # post, comment, command, confirmation, bounce, auto-reply, loop, rejected, discarded,
    # owner, held
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    hint: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Filled by processing, for listings of held mail.
    from_address: Mapped[str | None] = mapped_column(String(500), default=None)
    from_name: Mapped[str | None] = mapped_column(String(500), default=None)
    subject: Mapped[str | None] = mapped_column(Text, default=None)
    # A held reply waits for this Message-ID; it is released when that message is published.
    waiting_for: Mapped[str | None] = mapped_column(String(500), default=None)
    # Set by a moderator's approval: the hold rules no longer apply.
    approved: Mapped[bool] = mapped_column(Boolean, default=False)


class Post(Base):
    __tablename__ = "posts"
    __table_args__ = (
        UniqueConstraint("list_name", "message_id", name="uq_posts_message_id"),
        UniqueConstraint("list_name", "slug", name="uq_posts_slug"),
        Index("ix_posts_list_date", "list_name", "date"),
        # The archive's order of published posts: counts and pages from the index alone.
        Index("ix_posts_published_order", "list_name", "state", "date", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), default=None)
    message_id: Mapped[str] = mapped_column(String(500))
    thread_token: Mapped[str] = mapped_column(String(32), unique=True)
    slug: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(Text)
    author_name: Mapped[str] = mapped_column(String(500), default="")
    author_address: Mapped[str] = mapped_column(String(500), default="")
    date: Mapped[datetime] = mapped_column(UTCDateTime)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text, default=None)
    # published, scheduled
    state: Mapped[str] = mapped_column(String(16), default="published")
    publish_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    comment_count: Mapped[int] = mapped_column(Integer, default=0)
    # With the list's announce_at: the announcement waits until this time.
    announce_after: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    comments: Mapped[list[Comment]] = relationship(
        back_populates="post", order_by="Comment.number")


class Comment(Base):
    __tablename__ = "comments"
    __table_args__ = (
        UniqueConstraint("post_id", "number", name="uq_comments_number"),
        UniqueConstraint("list_name", "message_id", name="uq_comments_message_id"),
        Index("ix_comments_wanted_parent", "list_name", "wanted_parent"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), default=None)
    message_id: Mapped[str] = mapped_column(String(500))
    thread_token: Mapped[str] = mapped_column(String(32), unique=True)
    # Message-ID of the comment replied to; None for a reply to the post itself.
    parent_message_id: Mapped[str | None] = mapped_column(String(500), default=None)
    # The In-Reply-To that was not known yet; the comment moves there when it arrives.
    wanted_parent: Mapped[str | None] = mapped_column(String(500), default=None)
    author_name: Mapped[str] = mapped_column(String(500), default="")
    author_address: Mapped[str] = mapped_column(String(500), default="")
    date: Mapped[datetime] = mapped_column(UTCDateTime)
    subject: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")       # new text only
    quoted: Mapped[str] = mapped_column(Text, default="")
    signature: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text, default=None)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    post: Mapped[Post] = relationship(back_populates="comments")


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (UniqueConstraint("list_name", "address", name="uq_subscriptions_address"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(500))
    name: Mapped[str] = mapped_column(String(500), default="")
    mode: Mapped[str] = mapped_column(String(16), default="all")
    # pending, active, unsubscribed, disabled (by bounces)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    last_bounce_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Digest watermark: everything published after this goes into the next digest.
    digest_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # "text" (our grouped digest with reply links) or "mime" (multipart/digest of originals)
    digest_format: Mapped[str] = mapped_column(String(8), default="text")


class DigestRun(Base):
    """One digest issue of a list: its number and the cut-off it covered."""

    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("list_name", "volume", "issue", name="uq_digest_issue"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    volume: Mapped[int] = mapped_column(Integer)
    issue: Mapped[int] = mapped_column(Integer)
    cutoff: Mapped[datetime] = mapped_column(UTCDateTime)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recipients: Mapped[int] = mapped_column(Integer, default=0)


class Token(Base):
    """A single-use, expiring token: confirmations, moderation decisions, unsubscribe links."""

    __tablename__ = "tokens"
    __table_args__ = (Index("ix_tokens_address", "list_name", "address"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    list_name: Mapped[str] = mapped_column(String(64))
    # confirm-post, subscribe, moderate, unsubscribe
    kind: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(500), default="")
    ref: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Outbox(Base):
    """One outgoing mail for one recipient. Unique per kind + reference + recipient."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("kind", "ref", "recipient", name="uq_outbox_once"),
        # The sender's claim: ordered by (next_attempt_at, id) straight from the index.
        Index("ix_outbox_due", "state", "next_attempt_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    list_name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(500))
    envelope_from: Mapped[str] = mapped_column(String(500), default="")
    # Complete message bytes for one-off mail (notices); None when rendered at send time.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # The subscription a list mail is for: personalisation at send time, and it is only
    # sent while that subscription is active.
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", name="fk_outbox_subscription"), default=None)
    # queued, sending, sent, failed (permanent), bounced (gave up), cancelled (the
    # subscription ended before it went out)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
