"""The one sender: drains the outbox through a transport, with retries and backoff.

A row is claimed by setting ``state = 'sending'`` and pushing ``next_attempt_at`` a lease
into the future, in the same transaction that selects it (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several senders share the work). A sender that dies leaves its rows to come
due again when the lease runs out: a mail in flight at a crash may go out twice, never zero
times. A sent row is marked ``sent`` and never claimed again.

Rows without content (list mail) are made at claim time by ``app.renderers[kind]``, which
gets a ``Pending`` and returns a ``Rendered`` (or bytes; or None: nothing to send). A row
for a subscription that is no longer active is ``cancelled`` instead. Every mail is
DKIM-signed after the claim transaction when ``outbound.dkim_key_file`` is set. Results are
written back set-based: one UPDATE per 500 sent rows. A mail that fails for good (5xx) or
is given up after ``outbound.max_retry_age`` counts as a bounce for its subscription.

Speed (the fan-out of one post to 100,000 subscribers): the claim reads plain rows (no ORM
objects) in index order, ids go to PostgreSQL as one array parameter, a transport may take
a whole batch at once (``send_many``: the Maildir writes a batch in one thread call).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import BigInteger, ColumnElement, Select, any_, literal, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from .models import Outbox, Subscription
from .signing import SigningPool

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.outbound")

FIRST_RETRY = 60.0          # seconds; doubles on each attempt
MAX_RETRY_INTERVAL = 3600.0 * 4


class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class Transport(Protocol):
    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Pending:
    """A claimed outbox row, as a renderer sees it."""

    id: int
    list_name: str
    kind: str
    ref: str
    recipient: str
    envelope_from: str
    content: bytes | None
    attempts: int
    created_at: datetime
    subscription_id: int | None
    subscriber_name: str = ""


@dataclass
class Rendered:
    """What a renderer makes of a row: the message, and its envelope sender if not the row's."""

    content: bytes
    envelope_from: str | None = None


@dataclass
class Claimed:
    id: int
    list_name: str
    recipient: str
    envelope_from: str
    content: bytes
    attempts: int
    created_age: float
    subscription_id: int | None = None


class Sender:
    def __init__(self, app: App, transport: Transport | None = None) -> None:
        self.app = app
        self.transport = transport or make_transport(app)
        self.batch = 500
        self.lease = timedelta(seconds=int(app.config.outbound["lease"]))
        # None: not signing. Large batches are signed on every core (worker processes).
        self.signing = SigningPool(app) if app.config.outbound["dkim_key_file"] else None

    def _claim(self) -> list[Claimed]:
        """Claim due rows, render those made at send time, and DKIM-sign (after commit)."""
        app = self.app
        now = app.now()
        out: list[Claimed] = []
        cancelled: list[int] = []
        failed: list[dict[str, object]] = []
        with app.db.transaction() as session:
            # Leases of senders that died first, then what is queued: one state at a time,
            # so the (state, next_attempt_at, id) index gives the order without a sort.
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres:  # right after a fan-out the statistics are stale, and PostgreSQL
                # would sort every due row on each claim; the index order is what we want
                session.execute(text("SET LOCAL enable_sort = off"))
            rows = [Pending(*r) for r in session.execute(self._due("sending", now, self.batch))]
            if len(rows) < self.batch:
                rows += [Pending(*r) for r in session.execute(
                    self._due("queued", now, self.batch - len(rows)))]
            if postgres:
                session.execute(text("SET LOCAL enable_sort = on"))
            if not rows:
                return []
            subscribers = _subscribers(session, {r.subscription_id for r in rows
                                                 if r.subscription_id is not None})
            for row in rows:
                if row.subscription_id is not None:
                    sub = subscribers.get(row.subscription_id)
                    if sub is None or sub[1] != "active":
                        cancelled.append(row.id)
                        continue
                    row.subscriber_name = sub[0]
                content, envelope = row.content, row.envelope_from
                if content is None:
                    try:
                        result = self._render(session, row)
                    except Exception:
                        log.exception("outbox %s (%s %s): rendering failed", row.id, row.kind,
                                      row.ref)
                        failed.append({"id": row.id, "last_error": traceback.format_exc()})
                        continue
                    if result is None:
                        cancelled.append(row.id)
                        continue
                    content, envelope = result.content, result.envelope_from or envelope
                out.append(Claimed(row.id, row.list_name, row.recipient, envelope, content,
                                   row.attempts, (now - row.created_at).total_seconds(),
                                   row.subscription_id))
            for chunk in _chunks([c.id for c in out]):
                session.execute(update(Outbox).where(_one_of(session, Outbox.id, chunk)).values(
                    state="sending", next_attempt_at=now + self.lease))
            for chunk in _chunks(cancelled):
                session.execute(update(Outbox).where(_one_of(session, Outbox.id, chunk)).values(
                    state="cancelled", last_error="nothing to send (subscription ended, or "
                    "what it refers to is gone)"))
            if failed:
                session.execute(update(Outbox), [dict(f, state="failed") for f in failed])
        if self.signing is not None and out:
            for item, signed in zip(out, self.signing.sign_all([c.content for c in out])):
                item.content = signed
        return out

    @staticmethod
    def _due(state: str, now: datetime, limit: int) -> Select[Any]:
        return (select(Outbox.id, Outbox.list_name, Outbox.kind, Outbox.ref, Outbox.recipient,
                       Outbox.envelope_from, Outbox.content, Outbox.attempts,
                       Outbox.created_at, Outbox.subscription_id)
                .where(Outbox.state == state, Outbox.next_attempt_at <= now)
                .order_by(Outbox.next_attempt_at, Outbox.id).limit(limit)
                .with_for_update(skip_locked=True))

    def _render(self, session: Session, row: Pending) -> Rendered | None:
        renderer = self.app.renderers.get(row.kind)
        if renderer is None:
            raise LookupError(f"no renderer for kind {row.kind!r}")
        result = renderer(session, row)
        if result is None or isinstance(result, Rendered):
            return result
        return Rendered(result)

    def _record(self, results: list[tuple[Claimed, str, str]]) -> None:
        app = self.app
        now = app.now()
        max_age = float(app.config.outbound["max_retry_age"])
        sent = [item.id for item, outcome, _ in results if outcome == "sent"]
        changes: list[dict[str, object]] = []
        gave_up: list[tuple[Claimed, str]] = []
        for item, outcome, error in results:
            if outcome == "sent":
                continue
            change: dict[str, object] = {"id": item.id, "attempts": item.attempts + 1,
                                         "last_error": error[:2000]}
            if outcome == "permanent":
                change["state"] = "failed"
                gave_up.append((item, error))
            elif item.created_age >= max_age:
                change["state"] = "bounced"
                change["last_error"] = f"gave up after retries: {error}"[:2000]
                gave_up.append((item, change["last_error"]))  # type: ignore[arg-type]
            else:
                change["state"] = "queued"
            delay = min(FIRST_RETRY * 2 ** item.attempts, MAX_RETRY_INTERVAL)
            change["next_attempt_at"] = now + timedelta(seconds=delay)
            changes.append(change)
        with app.db.transaction() as session:
            for chunk in _chunks(sent):
                session.execute(update(Outbox).where(_one_of(session, Outbox.id, chunk)).values(
                    state="sent", sent_at=now, last_error=None,
                    attempts=Outbox.attempts + 1))
            if changes:
                session.execute(update(Outbox), changes)
            for item, error in gave_up:
                if item.subscription_id is not None:
                    from .bouncescore import delivery_failed
                    delivery_failed(app, session, item.list_name, item.subscription_id, error)

    async def deliver(self) -> int:
        """Drain once, then close the transport (``listserver deliver``)."""
        try:
            return await self.drain_once()
        finally:
            await self.close()

    async def close(self) -> None:
        await self.transport.close()
        if self.signing is not None:
            await asyncio.to_thread(self.signing.close)

    async def drain_once(self, stop: asyncio.Event | None = None) -> int:
        """Send everything due now (or until ``stop``: the batch in hand is finished and
        recorded first, so a clean stop leaves nothing in flight); return how many rows
        were tried.

        Claim, send and record run one after the other: overlapping the claim (Python code
        on a thread) with the sending made both slower, the two threads fighting over the
        GIL. When signing, most of a claim is the signatures, made in other processes:
        then the next batch is claimed and signed while this one is sent."""
        total = 0
        claimed = await asyncio.to_thread(self._claim)
        while claimed:
            stopping = stop is not None and stop.is_set()
            following = asyncio.ensure_future(asyncio.to_thread(self._claim)) \
                if self.signing is not None and len(claimed) >= self.batch \
                and not stopping else None
            try:
                results = await self._send_all(claimed)
                await asyncio.to_thread(self._record, results)
            except BaseException:
                if following is not None:  # its rows stay leased; they come due again
                    following.cancel()
                raise
            total += len(claimed)
            if following is not None:
                claimed = await following  # claimed already: sent even when stopping
            elif stop is not None and stop.is_set():
                break
            else:
                claimed = await asyncio.to_thread(self._claim)
        return total

    @staticmethod
    def _outcome(item: Claimed, error: BaseException | None) -> tuple[Claimed, str, str]:
        if error is None:
            return item, "sent", ""
        if isinstance(error, PermanentFailure):
            log.warning("outbox %s to %s failed for good: %s", item.id, item.recipient, error)
            return item, "permanent", str(error)
        # connection refused, 4xx, timeouts: try again later
        log.info("outbox %s to %s deferred: %s", item.id, item.recipient, error)
        return item, "temporary", str(error) or type(error).__name__

    async def _send_all(self, claimed: list[Claimed]) -> list[tuple[Claimed, str, str]]:
        send_many = getattr(self.transport, "send_many", None)
        if send_many is not None:
            errors = await send_many([(c.envelope_from, c.recipient, c.content)
                                      for c in claimed])
            return [self._outcome(c, e) for c, e in zip(claimed, errors)]
        limit = asyncio.Semaphore(int(self.app.config.outbound["concurrency"]))

        async def one(item: Claimed) -> tuple[Claimed, str, str]:
            async with limit:
                try:
                    await self.transport.send(item.envelope_from, item.recipient, item.content)
                except Exception as exc:
                    return self._outcome(item, exc)
                return self._outcome(item, None)
        return list(await asyncio.gather(*(one(c) for c in claimed)))

    async def run(self, stop: asyncio.Event) -> None:
        wake = self.app.wake_event("sender")
        while not stop.is_set():
            wake.clear()
            try:
                tried = await self.drain_once(stop)
                if tried:
                    log.info("outbox: %d mail(s) tried", tried)
            except Exception:
                log.exception("outbox drain failed; trying again shortly")
                await asyncio.sleep(1)
            try:
                await asyncio.wait_for(wake.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass
        await self.close()


T = TypeVar("T")


def _chunks(items: list[T], size: int = 500) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _one_of(session: Session, column: Any, ids: list[int]) -> ColumnElement[bool]:
    """``column IN ids``; on PostgreSQL ``= ANY(array)``, one parameter instead of 500."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(ids, postgresql.ARRAY(BigInteger)))  # type: ignore
    return column.in_(ids)  # type: ignore[no-any-return]


def _subscribers(session: Session, ids: set[int]) -> dict[int, tuple[str, str]]:
    """id -> (name, state) of the subscriptions some claimed rows are for."""
    found: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(sorted(ids)):
        for ident, name, state in session.execute(select(
                Subscription.id, Subscription.name, Subscription.state).where(
                _one_of(session, Subscription.id, chunk))):
            found[ident] = (name, state)
    return found


def make_transport(app: App) -> Transport:
    if app.config.outbound["transport"] == "smtp":
        from .relay import SmtpTransport
        return SmtpTransport(app.config)
    from .maildir import MaildirTransport
    return MaildirTransport(app.config.maildir)

