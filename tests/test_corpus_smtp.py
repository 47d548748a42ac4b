"""Every message of CPython's email test corpus, sent over SMTP to a running server: the
server stays up, and each message ends stored with a defined outcome and a reason."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest
from sqlalchemy import select

from listserver.models import Message

from conftest import RunningServer, wait_for


def cpython_corpus() -> Path | None:
    try:
        import test.test_email  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(os.path.dirname(test.test_email.__file__)) / "data"
    return path if path.is_dir() else None


CORPUS = cpython_corpus()


@pytest.mark.skipif(CORPUS is None, reason="CPython's test package is not installed")
def test_cpython_corpus_over_smtp(server: RunningServer) -> None:
    assert CORPUS is not None
    files = sorted(p for p in CORPUS.iterdir() if p.name.startswith("msg_"))
    assert len(files) > 40
    sent = 0
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
        for path in files:
            raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            client.sendmail("corpus@example.net", ["blog@lists.example.org"], raw)
            sent += 1
    server.idle(60)
    rows = server.app.db.call(lambda s: s.execute(select(Message)).scalars().all())
    # Identical files (the corpus has a few) are one message: stored once.
    assert 0 < len(rows) <= sent
    for row in rows:
        assert row.state in ("done", "held", "failed"), (row.id, row.state)
        assert row.reason or row.error, (row.id, row.outcome)
        if row.state == "done":
            assert row.outcome in ("post", "comment", "rejected", "bounce", "auto-reply",
                                   "loop", "command", "owner"), row.outcome
    failed = [r for r in rows if r.state == "failed"]
    assert failed == [], [r.error for r in failed][:1]
    # Still serving after all of that.
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        assert client.noop()[0] == 250
