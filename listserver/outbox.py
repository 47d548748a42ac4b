"""The outbox: every outgoing mail is a row before it is sent.

A row is unique per kind + reference + recipient, so re-running whatever enqueued it (a
restart in the middle of a fan-out, a repeated digest run) never sends anything twice.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import Outbox, utcnow


def enqueue(session: Session, list_name: str, kind: str, ref: str, recipient: str,
            content: bytes | None, envelope_from: str, when: datetime | None = None) -> bool:
    """Add one mail; False if that kind + ref + recipient was already queued."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    now = when or utcnow()
    stmt = insert(Outbox).values(
        list_name=list_name, kind=kind, ref=ref, recipient=recipient.lower(),
        envelope_from=envelope_from, content=content, state="queued", attempts=0,
        next_attempt_at=now, created_at=now).on_conflict_do_nothing()
    return bool(session.execute(stmt).rowcount)
