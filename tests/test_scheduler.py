"""The scheduler with an injected clock: scheduled posts, housekeeping, one scheduler."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select

from listserver import jobs
from listserver.models import Message, Post
from listserver.scheduler import SchedulerLock

from conftest import Clock, POST_SECRET, RunningServer, make_mail, outbox_mail, wait_for

OSLO = ZoneInfo("Europe/Oslo")



def test_scheduled_post_is_invisible_until_its_time(config, make_app) -> None:
    clock = Clock(datetime(2026, 3, 9, 8, 0, tzinfo=timezone.utc))
    app = make_app(config, clock=clock)
    with RunningServer(app) as server:
        msg = make_mail("Planlagt innlegg",
                        "Publish: 2026-03-10 07:00\n\nDette kommer i morgen.",
                        sender="Ivar <ivar@example.no>")
        server.send(msg, to=f"blog+post-{POST_SECRET}@lists.example.org")
        server.idle()
        assert server.export()["posts"] == []
        post = app.db.call(lambda s: s.execute(select(Post)).scalar_one())
        assert post.state == "scheduled"
        assert post.publish_at == datetime(2026, 3, 10, 7, 0, tzinfo=OSLO)
        assert not post.text.startswith("Publish:")
        [ack] = [m for m in outbox_mail(app) if m["To"] == "ivar@example.no"]
        assert "10.03.2026 kl. 07:00" in ack.get_content()
        # Not yet:
        clock.now = datetime(2026, 3, 10, 5, 59, tzinfo=timezone.utc)
        assert jobs.publish_due_now(app) == 0
        assert server.export()["posts"] == []
        # 07:00 in Oslo is 06:00 UTC in March (CET):
        clock.now = datetime(2026, 3, 10, 6, 0, tzinfo=timezone.utc)
        assert jobs.publish_due_now(app) == 1
        assert jobs.publish_due_now(app) == 0          # once
        [exported] = server.export()["posts"]
        assert exported["date"] == "2026-03-10T07:00:00+01:00"
        assert exported["url"].endswith("/2026-03-10-planlagt-innlegg.html")


def test_publish_line_in_the_past_publishes_at_once(server: RunningServer) -> None:
    msg = make_mail("Gammel plan", "Publish: 2001-01-01 10:00\n\nTekst.",
                    sender="Ivar <ivar@example.no>")
    server.send(msg, to=f"blog+post-{POST_SECRET}@lists.example.org")
    server.idle()
    assert [p["title"] for p in server.export()["posts"]] == ["Gammel plan"]


def test_held_messages_warned_once_then_expired(config, make_app) -> None:
    start = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    clock = Clock(start)
    app = make_app(config, clock=clock)
    with RunningServer(app) as server:
        msg = make_mail("Nytt tema", "Fra en leser.", sender="leser@example.net")
        server.send(msg)
        server.idle()
        received = app.db.call(lambda s: s.execute(select(Message.received_at)).scalar_one())
        clock.now = received + timedelta(days=11)
        assert jobs.expire_held_now(app) == (0, 0)
        clock.now = received + timedelta(days=12, minutes=1)
        assert jobs.expire_held_now(app) == (1, 0)
        assert jobs.expire_held_now(app) == (1, 0)    # the outbox row is unique: one mail
        server.idle()
        warnings = [m for m in outbox_mail(app) if "utløper" in m["Subject"]]
        assert len(warnings) == 1 and warnings[0]["To"] == "owner@example.org"
        clock.now = received + timedelta(days=14, minutes=1)
        assert jobs.expire_held_now(app) == (0, 1)
        row = app.db.call(lambda s: s.execute(select(Message)).scalar_one())
        assert (row.state, row.outcome) == ("done", "expired")


def test_expired_tokens_are_removed_after_a_grace_period(app) -> None:
    from listserver.models import Token
    clock = Clock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    app.clock = clock
    app.db.call(lambda s: app.issue_token(s, "blog", "confirm-post", ref="1"))
    clock.now += timedelta(days=5)          # expired (3 days) but within the grace
    assert jobs.expire_tokens_now(app) == 0
    clock.now += timedelta(days=6)
    assert jobs.expire_tokens_now(app) == 1
    assert app.db.call(lambda s: s.execute(select(Token)).all()) == []


def test_one_scheduler_lock_at_a_time(app, make_app, config) -> None:
    other = make_app(config)
    first, second = SchedulerLock(app), SchedulerLock(other)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()
        first.release()                      # the holder goes away: another takes over
        assert second.try_acquire()
    finally:
        first.release()
        second.release()


def test_missed_runs_after_downtime_are_coalesced(app) -> None:
    """A job whose run time passed five times while the server was down runs once at start."""
    import asyncio
    import time

    from apscheduler.triggers.interval import IntervalTrigger
    from sqlalchemy import text

    from listserver import scheduler as sched

    calls: list[str] = []
    jobs.PER_LIST["test_counter"] = (lambda _app, name: calls.append(name),
                                     lambda lst: IntervalTrigger(hours=1))
    try:
        async def session(downtime_hours: float | None) -> None:
            if downtime_hours is not None:   # the last run was long ago
                s = sched.start(app, paused=True)
                past = datetime.now(timezone.utc) - timedelta(hours=downtime_hours)
                s.modify_job("test_counter:blog", next_run_time=past)
                s.shutdown(wait=False)
            s = sched.start(app)
            await asyncio.sleep(1.0)
            s.shutdown(wait=True)

        asyncio.run(session(None))
        assert calls == []                      # first run an hour from now
        asyncio.run(session(5.5))
        assert calls == ["blog"]                # five missed runs, one call
        nxt = app.db.call(lambda db: db.execute(text(
            "SELECT next_run_time FROM apscheduler_jobs WHERE id = 'test_counter:blog'"
        )).scalar_one())
        assert nxt > time.time()
    finally:
        del jobs.PER_LIST["test_counter"]
