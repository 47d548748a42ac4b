"""The one sender: drains the outbox through a transport, with retries and backoff.

A row is claimed by setting ``state = 'sending'`` and pushing ``next_attempt_at`` a lease
into the future, in the same transaction that selects it (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several senders share the work). A sender that dies leaves its rows to come
due again when the lease runs out: a mail in flight at a crash may go out twice, never zero
times. A sent row is marked ``sent`` and never claimed again.
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import or_, select

from .models import Outbox

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.outbound")

LEASE = timedelta(minutes=10)
FIRST_RETRY = 60.0          # seconds; doubles on each attempt
MAX_RETRY_INTERVAL = 3600.0 * 4


class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class Transport(Protocol):
    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None: ...

    async def close(self) -> None: ...


class MaildirTransport:
    """Writes each mail into a Maildir, as a local delivery agent would."""

    def __init__(self, path: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self.box = mailbox.Maildir(str(path), create=True)

    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None:
        trace = f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n".encode()
        await asyncio.to_thread(self.box.add, trace + content)

    async def close(self) -> None:
        return None


@dataclass
class Claimed:
    id: int
    recipient: str
    envelope_from: str
    content: bytes
    attempts: int
    created_age: float


class Sender:
    def __init__(self, app: App, transport: Transport | None = None) -> None:
        self.app = app
        self.transport = transport or make_transport(app)
        self.batch = 200

    def _claim(self) -> list[Claimed]:
        app = self.app
        now = app.now()
        out: list[Claimed] = []
        with app.db.transaction() as session:
            rows = session.execute(
                select(Outbox).where(or_(Outbox.state == "queued", Outbox.state == "sending"),
                                     Outbox.next_attempt_at <= now)
                .order_by(Outbox.next_attempt_at, Outbox.id).limit(self.batch)
                .with_for_update(skip_locked=True)).scalars().all()
            for row in rows:
                content = row.content
                if content is None:
                    renderer = app.renderers.get(row.kind)
                    if renderer is None:
                        row.state = "failed"
                        row.last_error = f"no renderer for kind {row.kind!r}"
                        log.error("outbox %s: %s", row.id, row.last_error)
                        continue
                    content = renderer(session, row)
                row.state = "sending"
                row.next_attempt_at = now + LEASE
                out.append(Claimed(row.id, row.recipient, row.envelope_from, content,
                                   row.attempts, (now - row.created_at).total_seconds()))
        return out

    def _record(self, results: list[tuple[Claimed, str, str]]) -> None:
        app = self.app
        now = app.now()
        max_age = float(app.config.outbound["max_retry_age"])
        with app.db.transaction() as session:
            for item, outcome, error in results:
                row = session.get(Outbox, item.id)
                if row is None:
                    continue
                row.attempts += 1
                if outcome == "sent":
                    row.state, row.sent_at, row.last_error = "sent", now, None
                elif outcome == "permanent":
                    row.state, row.last_error = "failed", error
                elif item.created_age >= max_age:
                    row.state, row.last_error = "bounced", f"gave up after retries: {error}"
                else:
                    delay = min(FIRST_RETRY * 2 ** item.attempts, MAX_RETRY_INTERVAL)
                    row.state, row.last_error = "queued", error
                    row.next_attempt_at = now + timedelta(seconds=delay)

    async def drain_once(self) -> int:
        """Send everything due now; return how many rows were tried."""
        total = 0
        while True:
            claimed = await asyncio.to_thread(self._claim)
            if not claimed:
                return total
            results = await self._send_all(claimed)
            await asyncio.to_thread(self._record, results)
            total += len(claimed)

    async def _send_all(self, claimed: list[Claimed]) -> list[tuple[Claimed, str, str]]:
        limit = asyncio.Semaphore(int(self.app.config.outbound["concurrency"]))

        async def one(item: Claimed) -> tuple[Claimed, str, str]:
            async with limit:
                try:
                    await self.transport.send(item.envelope_from, item.recipient, item.content)
                    return item, "sent", ""
                except PermanentFailure as exc:
                    log.warning("outbox %s to %s failed for good: %s", item.id,
                                item.recipient, exc)
                    return item, "permanent", str(exc)
                except Exception as exc:  # connection refused, 4xx, timeouts: try again later
                    log.info("outbox %s to %s deferred: %s", item.id, item.recipient, exc)
                    return item, "temporary", str(exc) or type(exc).__name__
        return list(await asyncio.gather(*(one(c) for c in claimed)))

    async def run(self, stop: asyncio.Event) -> None:
        wake = self.app.wake_event("sender")
        while not stop.is_set():
            wake.clear()
            try:
                await self.drain_once()
            except Exception:
                log.exception("outbox drain failed; trying again shortly")
                await asyncio.sleep(1)
            try:
                await asyncio.wait_for(wake.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass
        await self.transport.close()


def make_transport(app: App) -> Transport:
    if app.config.outbound["transport"] == "smtp":
        from .relay import SmtpTransport
        return SmtpTransport(app.config)
    return MaildirTransport(app.config.maildir)

