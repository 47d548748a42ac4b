"""Queue depths and ages: ``listserver status`` and the ``/health`` endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Message, Outbox

if TYPE_CHECKING:
    from .app import App


def status(session: Session, app: App) -> dict[str, Any]:
    now = app.now()
    messages = dict(session.execute(
        select(Message.state, func.count()).group_by(Message.state)).all())
    outbox = dict(session.execute(
        select(Outbox.state, func.count()).group_by(Outbox.state)).all())
    oldest = session.execute(select(func.min(Outbox.created_at)).where(
        Outbox.state.in_(("queued", "sending")))).scalar()
    if oldest is not None and oldest.tzinfo is None:
        from datetime import timezone
        oldest = oldest.replace(tzinfo=timezone.utc)
    return {
        "messages": {k: int(v) for k, v in messages.items()},
        "outbox": {k: int(v) for k, v in outbox.items()},
        "oldest_unsent_age_seconds": (now - oldest).total_seconds() if oldest else 0,
        "ok": messages.get("failed", 0) == 0,
    }
