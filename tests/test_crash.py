"""``kill -9`` of a real ``listserver serve`` in the middle of an SMTP load loses no message
that was answered 250, and the restarted server finishes the work."""

from __future__ import annotations

import random
import smtplib
import threading
from pathlib import Path

import pytest
import tomllib
from sqlalchemy import func, select

from listserver.app import App
from listserver.config import parse_config
from listserver.models import Comment, Message

from conftest import POST_SECRET, make_mail, wait_for
from servekit import Serve, open_app, write_config


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


@pytest.mark.slow
def test_kill_9_at_several_points_every_acknowledged_message_processed_once(
        tmp_path: Path, database_url: str) -> None:
    """Three ``kill -9`` at random (seeded) points of an SMTP load. After each: everything
    answered 250 is stored; the restarted server first finishes the backlog the dead one
    left queued; the clients then deliver again what they got no 250 for, as MTAs do.
    At the end every message is stored once and published as exactly one comment."""
    rng = random.Random(20180309)
    config_path = write_config(tmp_path, database_url)
    app = open_app(config_path)
    parent = make_mail("Innlegg", "Kommenter!", sender="Ivar <ivar@example.no>")
    total, clients, kills = 300, 4, 3
    mails = {i: make_mail("Re: Innlegg", f"Kommentar {i}\n" + "tekst " * 200,
                          sender=f"Leser {i} <leser{i}@example.net>",
                          message_id=f"<multi-{i}@example.net>",
                          in_reply_to=parent["Message-ID"]).as_bytes() for i in range(total)}
    acked: set[int] = set()
    lock = threading.Lock()

    def load(port: int, todo: list[int]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                while True:
                    with lock:
                        if not todo:
                            return
                        i = todo.pop(0)
                    client.sendmail(f"leser{i}@example.net", ["blog@lists.example.org"],
                                    mails[i])
                    with lock:
                        acked.add(i)
        except (smtplib.SMTPException, OSError):
            return  # the server died under us: no 250, so the client keeps it for later

    def run_load(port: int, until: int) -> list[threading.Thread]:
        todo = [i for i in range(total) if i not in acked]
        threads = [threading.Thread(target=load, args=(port, todo)) for _ in range(clients)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= until or not any(t.is_alive() for t in threads), 120,
                 f"{until} acknowledged messages")
        return threads

    def stored() -> dict[str, str]:
        return dict(app.db.call(lambda s: s.execute(select(
            Message.message_id, Message.state)).all()))

    report = []
    serve = Serve(config_path)
    try:
        with smtplib.SMTP("127.0.0.1", serve.port) as client:
            client.sendmail("ivar@example.no",
                            [f"blog+post-{POST_SECRET}@lists.example.org"], parent.as_bytes())
        for kill in range(kills):
            target = len(acked) + rng.randint(40, 90)
            threads = run_load(serve.port, target)
            serve.kill()
            for t in threads:
                t.join(30)
            rows = stored()
            lost = [i for i in acked if f"<multi-{i}@example.net>" not in rows]
            assert lost == [], f"kill {kill}: {len(lost)} acknowledged messages lost"
            backlog = [mid for mid, state in rows.items() if state == "queued"]
            unacked_stored = sum(1 for i in range(total) if i not in acked
                                 and f"<multi-{i}@example.net>" in rows)
            serve = Serve(config_path)
            # The restarted worker resumes what the dead one left queued, unprompted.
            wait_for(lambda: all(stored()[mid] != "queued" for mid in backlog), 120,
                     "the restarted worker to finish the backlog")
            report.append(f"kill {kill + 1}: {len(acked)} acknowledged, {len(backlog)} "
                          f"queued (resumed after restart), {unacked_stored} stored "
                          "without a 250 (delivered again below)")
        threads = run_load(serve.port, total)
        for t in threads:
            t.join(60)
        assert len(acked) == total
        wait_for(lambda: "queued" not in stored().values(), 120, "processing to finish")
        serve.stop()
    finally:
        serve.ensure_dead()
    print("\n" + "\n".join(report))
    try:
        rows = app.db.call(lambda s: s.execute(select(
            Message.message_id, Message.state, Message.outcome)).all())
        by_id: dict[str, list[tuple[str, str | None]]] = {}
        for mid, state, outcome in rows:
            by_id.setdefault(mid, []).append((state, outcome))
        for i in range(total):
            mid = f"<multi-{i}@example.net>"
            assert by_id[mid] == [("done", "comment")], (mid, by_id[mid])  # stored once
        comments = app.db.call(lambda s: s.execute(select(Comment.message_id)).scalars().all())
        assert len(comments) == total == len(set(comments))              # published once
        numbers = app.db.call(lambda s: sorted(s.execute(select(Comment.number)).scalars()))
        assert numbers == list(range(1, total + 1))
    finally:
        app.close()
