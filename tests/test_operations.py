"""Operations: SIGTERM finishes what is in progress, the health endpoint and `status`."""

from __future__ import annotations

import json
import signal
import smtplib
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import select

from listserver.app import App
from listserver.config import load_config
from listserver.models import Message

from conftest import RunningServer, make_mail, wait_for
from servekit import Serve, write_config


def test_health_endpoint_reports_queues(server: RunningServer) -> None:
    msg = make_mail("Nytt tema", "Fra en leser.", sender="leser@example.net")
    server.send(msg)
    server.idle()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health") as response:
        assert response.status == 200
        data = json.loads(response.read())
    assert data["messages"] == {"held": 1}
    assert data["outbox"] == {"sent": 1}          # the held notice to the owner
    assert data["oldest_unsent_age_seconds"] == 0
    assert data["ok"] is True


def test_sigterm_finishes_sessions_and_exits_cleanly(tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path, database_url)
    serve = Serve(config)
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", serve.port, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    msg = make_mail("Hei", f"Melding {i}", sender="leser@example.net",
                                    message_id=f"<term-{i}@example.net>")
                    client.sendmail("leser@example.net", ["blog@lists.example.org"],
                                    msg.as_bytes())
                    acked.append(msg["Message-ID"])
                    i += 1
        except (smtplib.SMTPException, OSError):
            pass

    sender = threading.Thread(target=load)
    sender.start()
    wait_for(lambda: len(acked) >= 50, 60, "50 acknowledged messages")
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(60) == 0, "".join(serve.log[-20:])
    stop.set()
    sender.join(30)
    app = App(load_config(config))
    try:
        stored = set(app.db.call(lambda s: s.execute(select(Message.message_id)).scalars().all()))
        assert set(acked) <= stored
        # Refuses new connections once stopped.
        try:
            smtplib.SMTP("127.0.0.1", serve.port, timeout=3).quit()
            refused = False
        except OSError:
            refused = True
        assert refused
    finally:
        app.close()


def test_sigterm_lets_a_transaction_in_progress_finish(tmp_path: Path,
                                                       database_url: str) -> None:
    """SIGTERM arrives while a client is half-way through DATA: the client still gets its
    250 (and the message is stored), then 421 for a new transaction; new connections are
    refused; serve exits 0."""
    config = write_config(tmp_path, database_url)
    serve = Serve(config)
    msg = make_mail("Hei", "Midt i DATA.\n" + "tekst " * 2000, sender="leser@example.net")
    raw = msg.as_bytes().replace(b"\n", b"\r\n")
    try:
        client = smtplib.SMTP("127.0.0.1", serve.port, timeout=30)
        client.ehlo()
        assert client.mail("leser@example.net")[0] == 250
        assert client.rcpt("blog@lists.example.org")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(raw[:len(raw) // 2])
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(1)                                  # the server is stopping now
        client.send(raw[len(raw) // 2:] + b"\r\n.\r\n")
        code, _ = client.getreply()
        assert code == 250                            # the transaction finished
        try:
            again = client.mail("leser@example.net")[0]
        except smtplib.SMTPServerDisconnected:
            again = 421
        assert again == 421                           # no new transaction
        client.close()
        assert serve.proc.wait(30) == 0, "".join(serve.log[-20:])
    finally:
        serve.ensure_dead()
    app = App(load_config(config))
    try:
        stored = app.db.call(lambda s: s.execute(select(Message.message_id)).scalars().all())
        assert stored == [msg["Message-ID"]]
    finally:
        app.close()
