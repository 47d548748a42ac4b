"""Several ``listserver serve`` processes on one PostgreSQL database, each with its roles:

* ``front``: receive (two forked receivers) + process + http; ``mx2``: receive only;
* four ``send`` processes, which share the outbox through ``FOR UPDATE SKIP LOCKED``;
* two ``schedule`` processes, of which the database lock lets exactly one run.

All eight start at once on an empty schema. A post that arrives at ``mx2`` (which only
stores it) is processed by ``front`` and announced to 10,000 subscribers by the four
senders: no mail twice, none missing. Then the active scheduler is killed with SIGKILL
and the standby takes over and publishes a scheduled post that came due.

SQLite is one machine's store (one ``serve``): this test runs on PostgreSQL only.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from listserver.models import Outbox, Post, utcnow
from listserver.scheduler import ADVISORY_KEY

from conftest import PG_URL, POST_SECRET, make_mail, wait_for
from servekit import RecordingSink, Serve, add_subscribers, open_app, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PG_URL, reason="several serve processes share a database only "
                       "on PostgreSQL (set LISTSERVER_TEST_DATABASE_URL)"),
]

SUBSCRIBERS = 10_000
AUTHOR = "Ivar Johansen <ivar@example.no>"
PROCESSES = {
    "front": ("receive", "process", "http"),
    "mx2": ("receive",),
    **{f"send{i}": ("send",) for i in range(1, 5)},
    "sched1": ("schedule",),
    "sched2": ("schedule",),
}
RUNNING = r"scheduler running"


def scheduler_locks(app: object) -> int:
    """Holders of this schema's scheduler lock (pg_try_advisory_lock(key, hashtext(schema)))."""
    return int(app.db.call(lambda s: s.execute(text(  # type: ignore[attr-defined]
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = :key AND objsubid = 2 "
        "AND objid = (hashtext(current_schema())::bigint & 4294967295)"),
        {"key": ADVISORY_KEY}).scalar_one()))


def test_roles_on_one_postgresql_database(tmp_path: Path, database_url: str) -> None:
    sink = RecordingSink().start()
    config = write_config(
        tmp_path, database_url, lists=[{
            "name": "nytt", "title": "Nytt fra bydelen", "authors": ["ivar@example.no"],
            "language": "nb", "timezone": "Europe/Oslo", "post_secret": POST_SECRET}],
        outbound={"transport": "smtp", "host": "127.0.0.1", "port": sink.port},
        scheduler={"publish_interval": 1, "takeover_interval": 1},
        archive={"search": False})
    # All at once on an empty schema: the migrations must not trip over each other.
    procs = {name: Serve(config, roles, start=False) for name, roles in PROCESSES.items()}
    app = None
    try:
        for serve in procs.values():
            serve.started(120)
        app = open_app(config)
        addresses = add_subscribers(app, "blog", SUBSCRIBERS)
        nytt = add_subscribers(app, "nytt", 5, prefix="nabo")
        assert procs["front"].port and procs["mx2"].port != procs["front"].port
        assert not procs["send1"].port and not procs["sched1"].port   # no SMTP there

        # One scheduler runs; the other stays on standby.
        schedulers = ["sched1", "sched2"]
        wait_for(lambda: any(procs[n].logged(RUNNING) for n in schedulers), 30,
                 "a scheduler to take the lock")
        time.sleep(3)                                  # three takeover intervals
        [active] = [n for n in schedulers if procs[n].logged(RUNNING)]
        [standby] = [n for n in schedulers if n != active]
        assert scheduler_locks(app) == 1

        # The announcement: in through mx2, processed by front, sent by the four senders.
        post = make_mail("Sosialt entreprenørskap", "Status i Oslo kommune.", sender=AUTHOR)
        mid = str(post["Message-ID"])
        with smtplib.SMTP("127.0.0.1", procs["mx2"].port) as client:
            client.sendmail("ivar@example.no", [f"blog+post-{POST_SECRET}@lists.example.org"],
                            post.as_bytes())
        started = time.monotonic()

        def sent() -> int:
            return int(app.db.call(lambda s: s.execute(select(func.count()).select_from(
                Outbox).where(Outbox.kind == "post", Outbox.state == "sent")).scalar_one()))
        wait_for(lambda: sent() == SUBSCRIBERS, 240, "the announcement to go out")
        took = time.monotonic() - started
        got = Counter({rcpt: n for (rcpt, m), n in sink.settled().items() if m == mid})
        assert set(got) == set(addresses)                           # none missing
        assert max(got.values()) == 1                               # none twice
        tried = {n: sum(int(m.group(1)) for m in procs[n].logged(r"outbox: (\d+) mail"))
                 for n in procs if n.startswith("send")}
        assert sum(tried.values()) == SUBSCRIBERS, tried
        print(f"\n{SUBSCRIBERS} mails in {took:.1f}s by four senders: {tried}")
        assert sum(1 for n in tried.values() if n) >= 2, tried      # the work was shared

        # A scheduled post on the second list, then the active scheduler dies.
        scheduled = make_mail("Planlagt", "Publish: 2099-01-01 07:00\n\nKommer senere.",
                              sender=AUTHOR)
        with smtplib.SMTP("127.0.0.1", procs["front"].port) as client:
            client.sendmail("ivar@example.no", [f"nytt+post-{POST_SECRET}@lists.example.org"],
                            scheduled.as_bytes())

        def state() -> str | None:
            return app.db.call(lambda s: s.execute(select(Post.state).where(
                Post.message_id == scheduled["Message-ID"])).scalar_one_or_none())
        wait_for(lambda: state() == "scheduled", 30, "the scheduled post")
        procs[active].kill()
        # Its time comes now (rather than in 2099): only the standby can publish it.
        app.db.call(lambda s: s.execute(update(Post).where(
            Post.message_id == scheduled["Message-ID"]).values(
            publish_at=utcnow() - timedelta(seconds=1))))
        wait_for(lambda: procs[standby].logged(RUNNING), 30, "the standby to take over")
        assert scheduler_locks(app) == 1
        wait_for(lambda: state() == "published", 30, "the standby to publish it")
        wait_for(lambda: sum(n for (rcpt, m), n in sink.snapshot().items()
                             if m == scheduled["Message-ID"]) >= len(nytt), 60,
                 "its announcement")
        announced = Counter(rcpt for (rcpt, m) in sink.settled().elements()
                            if m == scheduled["Message-ID"])
        assert announced == Counter(nytt)                           # once each
        for name, serve in procs.items():
            if name != active:
                serve.stop()                                        # SIGTERM: exit 0
        assert not re.search("Traceback", "".join(
            line for serve in procs.values() for line in serve.log))
    finally:
        for serve in procs.values():
            serve.ensure_dead()
        sink.stop()
        if app is not None:
            app.close()
