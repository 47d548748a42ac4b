"""``kill -9`` of a real ``listserver serve`` in the middle of an SMTP load loses no message
that was answered 250, and the restarted server finishes the work."""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path

import tomllib
from sqlalchemy import func, select

from listserver.app import App
from listserver.config import parse_config
from listserver.models import Comment, Message

from conftest import POST_SECRET, make_mail, wait_for
from servekit import Serve, write_config


def test_kill_9_during_load_loses_nothing_acknowledged(tmp_path: Path,
                                                         database_url: str) -> None:
    config_path = write_config(tmp_path, database_url)
    serve = Serve(config_path)
    parent = make_mail("Innlegg", "Kommenter!", sender="Ivar <ivar@example.no>")
    with smtplib.SMTP("127.0.0.1", serve.port) as client:
        client.sendmail("ivar@example.no", [f"blog+post-{POST_SECRET}@lists.example.org"],
                        parent.as_bytes())
    acked: list[str] = []
    lock = threading.Lock()
    total, senders = 2000, 4

    def load(worker: int) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", serve.port, timeout=10)
            for i in range(worker, total, senders):
                msg = make_mail("Re: Innlegg", f"Kommentar {i}\n" + "tekst " * 600,
                                sender=f"Leser {i} <leser{i}@example.net>",
                                message_id=f"<load-{i}@example.net>",
                                in_reply_to=parent["Message-ID"])
                client.sendmail(f"leser{i}@example.net", ["blog@lists.example.org"],
                                msg.as_bytes())
                with lock:
                    acked.append(msg["Message-ID"])
        except (smtplib.SMTPException, OSError):
            return  # the server died under us: what was acknowledged is what counts

    threads = [threading.Thread(target=load, args=(w,)) for w in range(senders)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 700, 120, "700 acknowledged messages")
    serve.kill()
    for t in threads:
        t.join(30)
    at_kill = list(acked)
    assert 700 <= len(at_kill) < total

    app = App(parse_config(tomllib.loads(config_path.read_text()), path=config_path,
                           root=tmp_path))
    try:
        stored = set(app.db.call(lambda s: s.execute(select(Message.message_id)).scalars().all()))
        missing = [m for m in at_kill if m not in stored]
        assert missing == [], f"{len(missing)} acknowledged messages lost"
        restarted = Serve(config_path)
        try:
            def settled() -> bool:
                return app.db.call(lambda s: s.execute(select(func.count()).select_from(
                    Message).where(Message.state == "queued")).scalar_one()) == 0
            wait_for(settled, 120, "the restarted server to process everything")
        finally:
            restarted.stop()
        rows = app.db.call(lambda s: s.execute(select(
            Message.message_id, Message.state, Message.outcome)).all())
        by_id: dict[str, list[tuple[str, str | None]]] = {}
        for mid, state, outcome in rows:
            by_id.setdefault(mid, []).append((state, outcome))
        for mid in at_kill:
            assert by_id[mid] == [("done", "comment")], (mid, by_id[mid])
        comments = app.db.call(lambda s: s.execute(select(Comment.message_id)).scalars().all())
        assert len(comments) == len(set(comments))          # nothing published twice
        assert set(at_kill) <= set(comments)
        numbers = app.db.call(lambda s: sorted(s.execute(select(Comment.number)).scalars()))
        assert numbers == list(range(1, len(numbers) + 1))  # numbering has no gaps
    finally:
        app.close()
