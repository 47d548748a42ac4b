"""``kill -9`` of a real ``listserver serve`` in the middle of an SMTP load loses no message
that was answered 250, and the restarted server finishes the work."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomllib
from sqlalchemy import func, select

from listserver.app import App
from listserver.config import parse_config
from listserver.models import Comment, Message

from conftest import POST_SECRET, config_dict, make_mail, wait_for


def write_config(tmp_path: Path, database_url: str) -> Path:
    data = config_dict(database_url)
    lines = []
    for section in ("site", "smtp", "http", "database", "outbound", "archive"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in data[section].items()]
    lines.append("[[list]]")
    for k, v in data["list"][0].items():
        lines.append(f"{k} = " + (str(v).replace("'", '"') if isinstance(v, list)
                                  else f'"{v}"'))
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(path.read_text())  # it must be valid TOML
    return path


class Serve:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listserver.cli", "--config", str(config), "serve"],
            stderr=subprocess.PIPE, text=True)
        self.port = 0
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"smtp 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        assert self.port, "serve did not start"
        self.log: list[str] = []
        self.pump = threading.Thread(target=self._drain, daemon=True)
        self.pump.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.log.append(line)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.pump.join(10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, "".join(self.log[-20:])
        self.pump.join(10)


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
