"""On SQLite, accepting mail comes before processing it: a processing batch stops as soon
as an SMTP intake commit (in any process) is waiting for the single write lock."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from listserver.app import App
from listserver.db import Database
from listserver.intake import Incoming, store_incoming
from listserver.models import Message
from listserver.process import process_batch
from listserver.worker import drain

from conftest import make_mail


def queue(app: App, count: int) -> None:
    items = [Incoming("blog", make_mail(f"Innlegg {i}", "Tekst.",
                                        sender=f"s{i}@example.net").as_bytes(),
                      f"s{i}@example.net", ["blog@lists.example.org"])
             for i in range(count)]
    with app.db.transaction() as session:
        store_incoming(session, items, app.config.domain)


def queued(app: App) -> int:
    return app.db.call(lambda s: s.execute(
        select(func.count()).where(Message.state == "queued")).scalar_one())


def test_processing_stops_its_batch_when_intake_waits(app: App) -> None:
    if not app.db.is_sqlite:
        pytest.skip("PostgreSQL intake never waits for processing")
    queue(app, 6)
    other = Database(app.config.database_url)  # another receiver process's connection
    try:
        with other.intake_signal.intake():
            assert app.db.intake_signal.waiting()
            assert process_batch(app, 50) == 1   # one message, then it steps aside
        assert not app.db.intake_signal.waiting()
        assert queued(app) == 5
        assert drain(app) == 5
        assert queued(app) == 0
    finally:
        other.close()


def test_intake_signal_is_per_commit_not_per_process(app: App) -> None:
    """Two commits of one process overlap; the signal lasts until the last one ends."""
    if not app.db.is_sqlite:
        pytest.skip("SQLite only")
    signal = app.db.intake_signal
    first, second = threading.Event(), threading.Event()

    def commit(started: threading.Event, release: threading.Event) -> None:
        with signal.intake():
            started.set()
            release.wait(5)

    started_a, started_b = threading.Event(), threading.Event()
    a = threading.Thread(target=commit, args=(started_a, first))
    b = threading.Thread(target=commit, args=(started_b, second))
    a.start(), b.start()
    started_a.wait(5), started_b.wait(5)
    assert signal.waiting()
    first.set()
    a.join(5)
    time.sleep(0.01)
    assert signal.waiting()       # the second commit still holds it
    second.set()
    b.join(5)
    assert not signal.waiting()
