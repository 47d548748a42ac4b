"""Storing accepted mail: raw bytes committed before anyone answers 250.

``store_incoming`` is the one write every arrival path uses (SMTP, LMTP, ``inject``,
``import``). The same Message-ID with the same content is stored once (a unique key and
``ON CONFLICT DO NOTHING``); a message with no Message-ID gets one made from its content,
so a redelivery of it is recognised too.

``GroupCommitter`` is the SMTP path: sessions hand their messages to it and wait; one
thread commits everything that queued up while the previous commit ran. A lone session
waits for exactly one commit; under load one fsync covers many messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .db import Database
from .models import Message, utcnow
from .parse import content_digest, header_message_id

log = logging.getLogger("listserver.intake")


@dataclass
class Incoming:
    list_name: str
    raw: bytes
    envelope_from: str = ""
    recipients: list[str] = field(default_factory=list)
    source: str = "smtp"


def assigned_message_id(digest: str, domain: str) -> str:
    return f"<{digest[:32]}.assigned@{domain}>"


def _row(item: Incoming, domain: str, now: datetime) -> dict[str, object]:
    digest = content_digest(item.raw)
    message_id = header_message_id(item.raw)
    has_id = message_id is not None
    if message_id is None:
        message_id = assigned_message_id(digest, domain)
    return dict(list_name=item.list_name, message_id=message_id[:500], has_message_id=has_id,
                digest=digest, raw=item.raw, size=len(item.raw),
                envelope_from=item.envelope_from[:500], recipients=" ".join(item.recipients),
                source=item.source, received_at=now, state="queued", attempts=0,
                approved=False)


def insert_rows(session: Session, rows: list[dict[str, object]]) -> None:
    """One executemany of INSERT ... ON CONFLICT DO NOTHING: duplicates are skipped."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = session.execute(insert(Message.__table__).on_conflict_do_nothing(), rows)
    inserted = result.rowcount  # type: ignore[attr-defined]
    if inserted is not None and 0 <= inserted < len(rows):
        log.info("%d duplicate deliveries (same Message-ID and content) stored once",
                 len(rows) - inserted)


def store_incoming(session: Session, items: list[Incoming], domain: str) -> list[int]:
    """Insert the messages; return each one's row id (the existing row's for a duplicate)."""
    now = utcnow()
    rows = [_row(item, domain, now) for item in items]
    insert_rows(session, rows)
    ids = []
    for row in rows:
        ids.append(session.execute(select(Message.id).where(
            Message.list_name == row["list_name"], Message.message_id == row["message_id"],
            Message.digest == row["digest"])).scalar_one())
    return ids


class GroupCommitter:
    """Commit the messages of all concurrent SMTP sessions together, on one thread."""

    def __init__(self, db: Database, domain: str, on_stored: Callable[[], None]) -> None:
        self.db = db
        self.domain = domain
        self.on_stored = on_stored
        self._pending: list[tuple[list[Incoming], asyncio.Future[list[int]]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake")
        self._flushing = False

    async def store(self, items: list[Incoming]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((items, future))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush_loop())
        await future

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await loop.run_in_executor(self._executor, self._commit, batch)
                except Exception as exc:  # every waiter hears of it, and answers 451
                    log.exception("group commit of %d messages failed", len(batch))
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), ids in zip(batch, results):
                    if not future.done():
                        future.set_result(ids)
                self.on_stored()
        finally:
            self._flushing = False

    def _commit(self, batch: list[tuple[list[Incoming], object]]) -> list[list[int]]:
        now = utcnow()
        rows = [_row(item, self.domain, now) for items, _ in batch for item in items]
        with self.db.intake_signal.intake(), self.db.transaction() as session:
            insert_rows(session, rows)
        return [[] for _ in batch]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
