"""``kill -9`` of a real ``listserver serve`` in the middle of announcing a post to 10,000
subscribers through a real relay: after the restart every subscriber has the post, and the
only duplicates are mails that were in flight at the kill (rows claimed, state
``sending``), at most one claimed batch (``Sender.batch``)."""

from __future__ import annotations

import random
import time
import smtplib
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listserver.models import Outbox
from listserver.sender import Sender

from conftest import POST_SECRET, make_mail, wait_for
from servekit import RecordingSink, Serve, add_subscribers, open_app, write_config

pytestmark = pytest.mark.slow

SUBSCRIBERS = 10_000
AUTHOR = "Ivar Johansen <ivar@example.no>"


def outbox_states(app: object) -> Counter[str]:
    return Counter(dict(app.db.call(lambda s: s.execute(  # type: ignore[attr-defined]
        select(Outbox.state, func.count()).where(Outbox.kind == "post")
        .group_by(Outbox.state)).all())))


def test_kill_9_during_fan_out_loses_nothing_and_duplicates_only_what_was_in_flight(
        tmp_path: Path, database_url: str) -> None:
    kill_at = random.Random(10_000).randint(2_000, 7_000)   # seeded: the same every run
    sink = RecordingSink().start()
    # A short lease, so that the restarted sender takes the dead one's rows back within
    # seconds instead of the default ten minutes.
    config = write_config(tmp_path, database_url, archive={"search": False}, outbound={
        "transport": "smtp", "host": "127.0.0.1", "port": sink.port, "lease": 2})
    app = open_app(config)
    batch = Sender(app).batch                  # rows one sender claims at a time
    serve: Serve | None = None
    try:
        addresses = add_subscribers(app, "blog", SUBSCRIBERS)
        serve = Serve(config)
        post = make_mail("Sosialt entreprenørskap", "Status i Oslo kommune.", sender=AUTHOR)
        mid = str(post["Message-ID"])
        with smtplib.SMTP("127.0.0.1", serve.port) as client:
            client.sendmail("ivar@example.no", [f"blog+post-{POST_SECRET}@lists.example.org"],
                            post.as_bytes())
        wait_for(lambda: sink.count() >= kill_at, 120, f"{kill_at} mails at the relay")
        serve.kill()
        at_kill = sink.settled()               # what the relay had accepted from it
        states = outbox_states(app)
        in_flight, sent = states["sending"], states["sent"]
        accepted = sum(1 for (_, m) in at_kill if m == mid)

        serve = Serve(config)
        wait_for(lambda: outbox_states(app)["sent"] == SUBSCRIBERS, 180,
                 "the restarted server to finish the announcement")
        serve.stop()
    finally:
        if serve is not None:
            serve.ensure_dead()
        sink.stop()
        app.close()
    got = Counter({rcpt: n for (rcpt, m), n in sink.snapshot().items() if m == mid})
    missing = set(addresses) - set(got)
    duplicates = sum(n - 1 for n in got.values())
    print(f"\nkill -9 after {accepted} of {SUBSCRIBERS} mails accepted by the relay: "
          f"{sent} rows sent, {in_flight} in flight (sending); after the restart "
          f"{len(got)} subscribers have it, {duplicates} duplicate(s), {len(missing)} missing")
    assert missing == set()
    assert set(got) == set(addresses)
    # Duplicates are exactly the mails the relay took from the batch that was in flight:
    # accepted by the relay, not yet marked sent. They are at most that batch.
    assert duplicates == accepted - sent
    assert duplicates <= in_flight <= batch


def test_sigterm_during_fan_out_finishes_the_batch_and_duplicates_nothing(
        tmp_path: Path, database_url: str) -> None:
    """A clean stop in the middle of a fan-out: the sender finishes the batch it has
    claimed and records it, stops claiming more, and leaves no row in flight; the next
    start sends the rest, and nobody gets the post twice."""
    sink = RecordingSink().start()
    config = write_config(tmp_path, database_url, archive={"search": False}, outbound={
        "transport": "smtp", "host": "127.0.0.1", "port": sink.port})
    app = open_app(config)
    serve: Serve | None = None
    try:
        addresses = add_subscribers(app, "blog", SUBSCRIBERS)
        serve = Serve(config)
        post = make_mail("Sosialt entreprenørskap", "Status i Oslo kommune.", sender=AUTHOR)
        mid = str(post["Message-ID"])
        with smtplib.SMTP("127.0.0.1", serve.port) as client:
            client.sendmail("ivar@example.no", [f"blog+post-{POST_SECRET}@lists.example.org"],
                            post.as_bytes())
        wait_for(lambda: sink.count() >= 2_000, 120, "2,000 mails at the relay")
        stopping = time.monotonic()
        serve.stop()                                   # SIGTERM; exit status 0
        took = time.monotonic() - stopping
        states = outbox_states(app)
        at_stop = sink.settled()
        assert states["sending"] == 0, states          # nothing left in flight
        assert sum(1 for (_, m) in at_stop if m == mid) == states["sent"] < SUBSCRIBERS
        serve = Serve(config)
        wait_for(lambda: outbox_states(app)["sent"] == SUBSCRIBERS, 180,
                 "the next start to finish the announcement")
        serve.stop()
    finally:
        if serve is not None:
            serve.ensure_dead()
        sink.stop()
        app.close()
    got = Counter({rcpt: n for (rcpt, m), n in sink.snapshot().items() if m == mid})
    print(f"\nSIGTERM stopped serve in {took:.1f}s with {states['sent']} of {SUBSCRIBERS} "
          f"sent and none in flight; after the restart {len(got)} have it, "
          f"{sum(got.values()) - len(got)} twice")
    assert set(got) == set(addresses) and max(got.values()) == 1
