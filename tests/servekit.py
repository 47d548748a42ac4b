"""Real ``listserver serve`` processes for the crash, outage and scale-out tests.

``write_config`` writes the test configuration as a TOML file; ``Serve`` runs
``listserver serve`` (optionally with ``--role``) as a subprocess and keeps its log;
``RecordingSink`` is a real SMTP relay (aiosmtpd, its own thread) that records every
(recipient, Message-ID) it accepts, cheaply enough for 10,000 mails;
``add_subscribers`` fills a list straight into the database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import tomllib
from sqlalchemy import insert

from listserver.app import App
from listserver.config import load_config
from listserver.models import Subscription, utcnow

from conftest import config_dict, free_port


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(tmp_path: Path, database_url: str, *, lists: list[dict[str, Any]] = (),
                 **sections: dict[str, Any]) -> Path:
    """The test configuration (``conftest.config_dict``) with ``sections`` merged in and
    ``lists`` added after ``blog``, as ``tmp_path/config.toml``."""
    data = config_dict(database_url)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for section, values in data.items():
        if section == "list":
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    for lst in [*data["list"], *lists]:
        lines.append("[[list]]")
        lines += [f"{k} = {_toml(v)}" for k, v in lst.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(path.read_text(encoding="utf-8"))  # it must be valid TOML
    return path


class Serve:
    """``listserver serve`` in a subprocess; ``roles`` become ``--role`` options."""

    def __init__(self, config: Path, roles: tuple[str, ...] = (), start: bool = True) -> None:
        command = [sys.executable, "-m", "listserver.cli", "--config", str(config), "serve"]
        for role in roles:
            command += ["--role", role]
        self.roles = roles
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.port = 0
        self.http_port = 0
        self.log: list[str] = []
        self.pump: threading.Thread | None = None
        if start:
            self.started()

    def started(self, timeout: float = 60) -> Serve:
        """Wait for the 'listserver serving' line, then keep reading the log in a thread."""
        if self.pump is not None:
            return self
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if "listserver serving" in line:
                smtp = re.search(r"smtp 127\.0\.0\.1:(\d+)", line)
                http = re.search(r"http 127\.0\.0\.1:(\d+)", line)
                self.port = int(smtp.group(1)) if smtp else 0
                self.http_port = int(http.group(1)) if http else 0
                self.pump = threading.Thread(target=self._drain, daemon=True)
                self.pump.start()
                return self
        raise AssertionError("serve did not start:\n" + "".join(self.log[-30:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.log.append(line)

    def logged(self, pattern: str) -> list[re.Match[str]]:
        return [m for m in (re.search(pattern, line) for line in list(self.log)) if m]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.pump is not None:
            self.pump.join(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, "".join(self.log[-20:])
        if self.pump is not None:
            self.pump.join(10)

    def ensure_dead(self) -> None:
        """For ``finally`` blocks: a test that failed half-way leaves no process behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.I | re.M)


class RecordingSink:
    """A real SMTP relay (aiosmtpd in its own thread) that counts what it accepts: one
    (recipient, Message-ID) per recipient of every message. ``down_after`` makes it stop
    taking connections and answer ``421`` to every new transaction once it has accepted
    that many mails, the way a relay that is shutting down does; ``start`` again after
    ``stop`` brings it back on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.got: Counter[tuple[str, str]] = Counter()
        self.accepted = 0
        self.down_after: int | None = None
        self.going_down = False
        self.controller: Any = None
        self._lock = threading.Lock()

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.going_down:
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        head = envelope.original_content.split(b"\r\n\r\n", 1)[0]
        found = MESSAGE_ID.search(head)
        mid = found.group(1).decode() if found else ""
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.got[(rcpt.lower(), mid)] += 1
                self.accepted += 1
            if self.down_after is not None and self.accepted >= self.down_after \
                    and not self.going_down:
                self.going_down = True
                self.controller.server.close()     # refuse new connections from now on
        return "250 OK"

    def start(self) -> RecordingSink:
        from aiosmtpd.controller import Controller
        self.going_down = False
        self.down_after = None
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def count(self) -> int:
        with self._lock:
            return self.accepted

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.got)

    def settled(self, quiet: float = 0.5, timeout: float = 10) -> Counter[tuple[str, str]]:
        """What it has accepted once nothing new has arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = self.count()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.count()
            if now == last:
                break
            last = now
        return self.snapshot()


def open_app(path: Path) -> App:
    """An App on the config file, for reading and seeding the database from the test."""
    from listserver.plugins import install
    app = App(load_config(path))
    install(app)
    app.db.migrate()
    return app


def add_subscribers(app: App, list_name: str, count: int, prefix: str = "reader",
                    mode: str = "all") -> list[str]:
    """``count`` active subscribers, inserted in a few statements; their addresses."""
    now = utcnow()
    addresses = [f"{prefix}{i:05}@example.net" for i in range(count)]
    rows = [{"list_name": list_name, "address": a, "name": "", "mode": mode,
             "state": "active", "bounce_score": 0.0, "created_at": now, "confirmed_at": now,
             "digest_format": "text"} for a in addresses]
    with app.db.transaction() as session:
        for start in range(0, len(rows), 2000):
            session.execute(insert(Subscription), rows[start:start + 2000])
    return addresses
