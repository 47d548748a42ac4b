"""Fixtures: a real database (SQLite file, or PostgreSQL when LISTSERVER_TEST_DATABASE_URL is
set), a real ``Server`` on ephemeral loopback ports in its own thread, a real aiosmtpd sink
for outgoing mail. Every fixture that starts something stops it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import json
import mailbox
import os
import re
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from listserver.app import App
from listserver.config import Config, parse_config
from listserver.export import export_json
from listserver.plugins import install
from listserver.server import ROLES, Server

PG_URL = os.environ.get("LISTSERVER_TEST_DATABASE_URL", "")
POST_SECRET = "s3cretpost"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
if not CORPUS.exists():  # CI clones next to a copy of shared/
    CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'listserver.sqlite3'}"
        return
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def config_dict(database_url: str, **lists: Any) -> dict[str, Any]:
    blog = {
        "name": "blog", "title": "Sosialt entreprenørskap", "authors": ["ivar@example.no"],
        "owners": ["owner@example.org"], "language": "nb", "timezone": "Europe/Oslo",
        "post_secret": POST_SECRET,
    }
    blog.update(lists.pop("blog", {}))
    return {
        "site": {"domain": "lists.example.org", "base_url": "http://archive.test"},
        "smtp": {"port": 0, "lmtp_port": 0, "max_message_size": 200_000},
        "http": {"port": 0},
        "database": {"url": database_url},
        "outbound": {"transport": "maildir", "maildir": "outbox"},
        "archive": {"directory": "archive"},
        "list": [blog, *lists.values()],
    }


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return parse_config(config_dict(database_url), root=tmp_path)


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def factory(cfg: Config, **kwargs: Any) -> App:
        app = App(cfg, **kwargs)
        install(app)
        app.db.migrate()
        apps.append(app)
        return app
    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def app(config: Config, make_app: Callable[..., App]) -> App:
    return make_app(config)


class RunningServer:
    """A ``Server`` running in a thread with its own event loop."""

    def __init__(self, app: App, roles: tuple[str, ...] = ROLES) -> None:
        self.app = app
        self.server = Server(app, roles)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def smtp_port(self) -> int:
        return self.server.smtp_port

    @property
    def lmtp_port(self) -> int:
        return self.server.lmtp_port

    @property
    def http_port(self) -> int:
        return self.server.http_port

    def send(self, raw: bytes | EmailMessage, to: str = "blog@lists.example.org",
             mail_from: str = "sender@example.net") -> None:
        data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.sendmail(mail_from, [to], data)

    def export(self) -> dict[str, Any]:
        return self.app.db.call(export_json, self.app.config, self.app.config.lists["blog"])

    def idle(self, timeout: float = 20) -> None:
        """Wait until nothing is queued for processing or sending."""
        from listserver.models import Message, Outbox
        from sqlalchemy import func, select

        def busy() -> int:
            return self.app.db.call(lambda s: s.execute(select(func.count()).select_from(
                Message).where(Message.state == "queued")).scalar_one() + s.execute(
                select(func.count()).select_from(Outbox).where(
                    (Outbox.state == "sending") | ((Outbox.state == "queued") &
                                                   (Outbox.next_attempt_at <= self.app.now()))
                )).scalar_one())
        wait_for(lambda: busy() == 0, timeout, "queues to drain")


@pytest.fixture
def server(app: App) -> Iterator[RunningServer]:
    with RunningServer(app) as running:
        yield running


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def outbox_mail(app: App) -> list[email.message.EmailMessage]:
    """Mail written to the Maildir outbox, oldest first."""
    path = app.config.maildir
    if not path.exists():
        return []
    box = mailbox.Maildir(str(path), create=False)

    def written(key: str) -> tuple[int, ...]:  # Maildir names: SECONDS.MusecPpidQn.host
        found = re.match(r"(\d+)\.M(\d+)P\d+Q(\d+)", key)
        return tuple(map(int, found.groups())) if found else (0,)
    items = []
    for key in sorted(box.keys(), key=written):
        with open(os.path.join(str(path), box._lookup(key)), "rb") as fh:  # type: ignore
            items.append(email.message_from_binary_file(fh, policy=email.policy.default))
    return items  # type: ignore[return-value]


def make_mail(subject: str, body: str, *, sender: str = "Kari Nordmann <kari@example.net>",
              to: str = "blog@lists.example.org", message_id: str | None = None,
              in_reply_to: str | None = None, references: str | None = None,
              **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="example.net")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


# --- Outbound: a real aiosmtpd server as the relay, and a clock tests can move ------------

def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    """An aiosmtpd server standing in for the relay. It records what it accepts; ``refuse``
    maps a recipient to the reply its RCPT gets instead (``"550 5.1.1 no such user"``)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, str] = {}
        self.controller: Any = None
        self._lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
        return "250 OK"

    def start(self) -> Sink:
        from aiosmtpd.controller import Controller
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self) -> list[tuple[str, str, email.message.EmailMessage]]:
        """(envelope sender, recipient, parsed message) of everything accepted so far."""
        with self._lock:
            got = list(self.received)
        return [(mail_from, rcpt, email.message_from_bytes(  # type: ignore[misc]
            raw, policy=email.policy.default)) for mail_from, rcpts, raw in got for rcpt in rcpts]

    def to(self, recipient: str) -> list[email.message.EmailMessage]:
        return [m for _, rcpt, m in self.messages() if rcpt == recipient]


@pytest.fixture
def sink() -> Iterator[Sink]:
    running = Sink().start()
    yield running
    running.stop()


class Clock:
    """A clock for ``App(clock=...)`` that tests move forward."""

    def __init__(self, now: Any = None) -> None:
        from listserver.models import utcnow
        self.now = now or utcnow()

    def __call__(self) -> Any:
        return self.now

    def advance(self, **delta: float) -> None:
        from datetime import timedelta
        self.now += timedelta(**delta)


def relay_config(database_url: str, root: Path, port: int, **sections: Any) -> Config:
    """The test config with ``transport = "smtp"`` pointed at a sink on ``port``."""
    data = config_dict(database_url, blog=sections.pop("blog", {}))
    data["outbound"].update(transport="smtp", host="127.0.0.1", port=port)
    for name, values in sections.items():
        data[name].update(values)
    return parse_config(data, root=root)
