"""The Maildir transport: outgoing mail as files, for development, tests and local delivery.

It is the default transport (``outbound.transport = "maildir"``); the sender hands it whole
batches (``send_many``), written in one worker-thread call.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from pathlib import Path

from .sender import TemporaryFailure


class MaildirTransport:
    """Writes each mail into a Maildir, as a local delivery agent would: a file written in
    ``tmp/`` and renamed into ``new/``, named like ``mailbox.Maildir`` names them. A batch
    of mails is written in one worker-thread call (``send_many``)."""

    def __init__(self, path: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self.path = path
        self._counter = itertools.count(1)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def write(self, envelope_from: str, recipient: str, content: bytes) -> None:
        now = time.time()
        name = (f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._counter)}."
                f"{self._host}")
        tmp = self.path / "tmp" / name
        with open(tmp, "xb") as fh:
            fh.write(f"Return-Path: <{envelope_from}>\r\nDelivered-To: {recipient}\r\n"
                     .encode())
            fh.write(content)
        os.rename(tmp, self.path / "new" / name)

    def write_many(self, items: list[tuple[str, str, bytes]]) -> list[Exception | None]:
        errors: list[Exception | None] = []
        for envelope_from, recipient, content in items:
            try:
                self.write(envelope_from, recipient, content)
                errors.append(None)
            except OSError as exc:
                errors.append(TemporaryFailure(f"maildir: {exc}"))
        return errors

    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None:
        await asyncio.to_thread(self.write, envelope_from, recipient, content)

    async def send_many(self, items: list[tuple[str, str, bytes]]) -> list[Exception | None]:
        return await asyncio.to_thread(self.write_many, items)

    async def close(self) -> None:
        return None
