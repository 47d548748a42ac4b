"""The relay goes away in the middle of a fan-out and comes back half a day later: every
subscriber gets the post exactly once, retries back off exponentially up to the cap, and
nothing is given up or counted as a bounce before ``outbound.max_retry_age``.

The sender runs for real against a real relay (an aiosmtpd sink on loopback); only time is
injected (``App(clock=...)``), so twelve hours of outage take a few seconds."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select

from listserver.app import App
from listserver.intake import Incoming, store_incoming
from listserver.models import Outbox, Subscription
from listserver.process import process_id
from listserver.sender import FIRST_RETRY, MAX_RETRY_INTERVAL, Sender

from conftest import POST_SECRET, Clock, make_mail, relay_config
from servekit import RecordingSink, add_subscribers

SUBSCRIBERS = 1_000
OUTAGE = timedelta(hours=12)


def rows(app: App) -> list[tuple[str, int, datetime]]:
    return app.db.call(lambda s: s.execute(select(
        Outbox.state, Outbox.attempts, Outbox.next_attempt_at).where(
        Outbox.kind == "post")).all())


def test_relay_down_mid_fan_out_then_back_every_mail_once_with_backoff(
        database_url: str, tmp_path: Path, make_app: Callable[..., App]) -> None:
    sink = RecordingSink().start()
    clock = Clock()
    app = make_app(relay_config(database_url, tmp_path, sink.port), clock=clock)
    addresses = add_subscribers(app, "blog", SUBSCRIBERS)
    post = make_mail("Status", "Status for arbeidet.", sender="Ivar <ivar@example.no>")
    [pk] = app.db.call(store_incoming, [Incoming(
        "blog", post.as_bytes(), "ivar@example.no",
        [f"blog+post-{POST_SECRET}@lists.example.org"])], app.config.domain)
    process_id(app, pk)
    sink.down_after = 300          # the relay stops taking mail part-way into the first batch
    history: list[tuple[int, float]] = []   # (attempts, seconds to the next try) per round

    async def run(sender: Sender) -> None:
        started = clock.now
        assert await sender.drain_once() == SUBSCRIBERS   # every row tried once
        delivered = sink.count()
        assert 300 <= delivered < 500
        states = Counter(state for state, _, _ in rows(app))
        assert states == {"sent": delivered, "queued": SUBSCRIBERS - delivered}
        while clock.now - started < OUTAGE:
            waiting = [(a, due) for state, a, due in rows(app) if state == "queued"]
            [attempts] = {a for a, _ in waiting}
            [due] = {d for _, d in waiting}   # one schedule for all: they failed together
            history.append((attempts, (due - clock.now).total_seconds()))
            clock.now = due - timedelta(seconds=1)
            assert await sender.drain_once() == 0         # backing off: not yet
            clock.now = due
            assert await sender.drain_once() == len(waiting)   # refused again
            assert sink.count() == delivered
            assert not any(state in ("bounced", "failed") for state, _, _ in rows(app))
        sink.stop()                    # the relay comes back on the same port
        sink.start()
        [due] = {d for state, _, d in rows(app) if state == "queued"}
        clock.now = due
        assert await sender.drain_once() == SUBSCRIBERS - delivered
        clock.now += timedelta(days=1)
        assert await sender.drain_once() == 0

    async def main() -> None:
        sender = Sender(app)
        try:
            await run(sender)
        finally:
            await sender.transport.close()

    try:
        asyncio.run(main())
    finally:
        sink.stop()
    got = sink.snapshot()
    assert Counter(rcpt for rcpt, mid in got.elements()
                   if mid == post["Message-ID"]) == Counter(addresses)   # each exactly once
    assert Counter(state for state, _, _ in rows(app)) == {"sent": SUBSCRIBERS}
    # Exponential backoff: a minute, doubling with each attempt, capped at four hours.
    delays = [delay for _, delay in history]
    expected = [min(FIRST_RETRY * 2 ** (a - 1), MAX_RETRY_INTERVAL) for a, _ in history]
    assert delays == expected, history
    assert delays[:3] == [60, 120, 240] and delays[-1] == MAX_RETRY_INTERVAL
    # Temporary failures within max_retry_age are not bounces.
    scores = app.db.call(lambda s: s.execute(select(func.max(Subscription.bounce_score)))
                         .scalar_one())
    assert scores == 0
    tries = Counter(a for state, a, _ in rows(app))
    print(f"\nrelay down after {tries[1]} mails; rows by attempts {dict(tries)}; "
          f"retry delays (s) {delays}")
