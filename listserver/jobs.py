"""The scheduler's jobs. Each is idempotent and takes its time from ``app.now()``.

APScheduler's persistent job store keeps a job as an importable reference plus arguments,
so the module-level functions here find the running App through ``register``; tests call
the ``*_now`` functions with an App directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import notices
from .models import Message, Post, Token

if TYPE_CHECKING:
    from .app import App
    from .config import ListConfig

log = logging.getLogger("listserver.scheduler")

_app: App | None = None
# Per-list jobs other parts add (digests, announcements): name -> (function, trigger maker).
PER_LIST: dict[str, tuple[Callable[[App, str], Any], Callable[[ListConfig], Any]]] = {}
# Called by publish_due as well: batched announcements that have come due.
ANNOUNCERS: list[Callable[[App], int]] = []
TOKEN_GRACE = timedelta(days=7)


def register(app: App) -> None:
    global _app
    _app = app


def _current() -> App:
    if _app is None:
        raise RuntimeError("no application registered for scheduled jobs")
    return _app


def per_list_triggers(lst: ListConfig) -> list[tuple[str, Any]]:
    return [(name, make_trigger(lst)) for name, (_, make_trigger) in PER_LIST.items()
            if make_trigger(lst) is not None]


def run_per_list(name: str, list_name: str) -> Any:
    fn, _ = PER_LIST[name]
    return fn(_current(), list_name)


# -- scheduled posts --------------------------------------------------------------------

def publish_due_now(app: App) -> int:
    """Publish the scheduled posts whose time has come; return how many."""
    from .publish import publish_scheduled
    now = app.now()
    with app.db.transaction() as session:
        due = session.execute(select(Post).where(
            Post.state == "scheduled", Post.publish_at <= now).order_by(
            Post.publish_at).with_for_update(skip_locked=True)).scalars().all()
        for post in due:
            publish_scheduled(session, app.hooks, post, now)
        count = len(due)
    if count:
        app.wake_sender()
    for announce in ANNOUNCERS:
        count += announce(app)
    return count


def publish_due() -> int:
    return publish_due_now(_current())


# -- housekeeping -----------------------------------------------------------------------

def expire_tokens_now(app: App) -> int:
    """Delete tokens that expired more than a week ago (used ones keep their row until then,
    so that a second use still answers 'already used')."""
    cutoff = app.now() - TOKEN_GRACE
    with app.db.transaction() as session:
        result = session.execute(delete(Token).where(
            Token.expires_at.is_not(None), Token.expires_at < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def expire_tokens() -> int:
    return expire_tokens_now(_current())


HELD_EXPIRY = timedelta(days=14)
HELD_WARNING = timedelta(days=2)


def expire_held_now(app: App) -> tuple[int, int]:
    """Warn owners about held messages that expire within two days; expire old ones.

    Returns (warned, expired). The warning is an outbox row unique per message, so each
    held message is warned about once however often this runs.
    """
    now = app.now()
    warned = expired = 0
    with app.db.transaction() as session:
        held = session.execute(select(Message).where(
            Message.state == "held",
            Message.received_at <= now - HELD_EXPIRY + HELD_WARNING)).scalars().all()
        for message in held:
            lst = app.config.lists.get(message.list_name)
            if message.received_at <= now - HELD_EXPIRY:
                message.state = "done"
                message.outcome = "expired"
                message.reason = f"held for {HELD_EXPIRY.days} days without a decision"
                message.processed_at = now
                expired += 1
            elif lst is not None:
                warned += _warn_owners(app, session, lst, message, now)
    if warned:
        app.wake_sender()
    if expired:
        log.info("expired %d held message(s)", expired)
    return warned, expired


def _warn_owners(app: App, session: Session, lst: ListConfig, message: Message,
                 now: datetime) -> int:
    expires = (message.received_at + HELD_EXPIRY).astimezone(lst.tz)
    for owner in lst.owners:
        notices.send(app, session, lst, "held-expiry-warning", f"msg:{message.id}", owner,
                     "held_expiry", message=message, expires=expires)
    return len(lst.owners)


def expire_held() -> tuple[int, int]:
    return expire_held_now(_current())
