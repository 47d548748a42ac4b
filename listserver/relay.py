"""Sending through an SMTP relay with aiosmtplib, reusing connections.

A small pool of open connections (``outbound.concurrency``) is shared by the sender; a
connection that fails is dropped and a new one opened on the next use. Reply codes decide
the outcome: 5xx for a recipient is permanent for that mail only; 4xx and connection
failures are temporary and retried with backoff by the sender.
"""

from __future__ import annotations

import asyncio
import logging
import os

import aiosmtplib

from .config import Config
from .sender import PermanentFailure, TemporaryFailure

log = logging.getLogger("listserver.outbound")


class SmtpTransport:
    def __init__(self, config: Config) -> None:
        out = config.outbound
        self.host = str(out["host"])
        self.port = int(out["port"])
        self.username = str(out["username"]) or None
        self.password = os.environ.get("LISTSERVER_RELAY_PASSWORD") if self.username else None
        self.starttls = bool(out["starttls"])
        self.helo = config.domain
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, local_hostname=self.helo,
                                 start_tls=self.starttls, use_tls=False, timeout=60)
        await client.connect()
        if self.username and self.password is not None:
            await client.login(self.username, self.password)
        return client

    async def _get(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                return client
        return await self._connect()

    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None:
        try:
            client = await self._get()
        except (OSError, aiosmtplib.SMTPException) as exc:
            raise TemporaryFailure(f"relay {self.host}:{self.port} unreachable: {exc}") from exc
        try:
            await client.sendmail(envelope_from, [recipient], content)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self._idle.put_nowait(client)
            code = exc.recipients[0].code if exc.recipients else 450
            raise (PermanentFailure if code >= 500 else TemporaryFailure)(str(exc)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if client.is_connected:
                try:
                    await client.rset()
                    self._idle.put_nowait(client)
                except aiosmtplib.SMTPException:
                    client.close()
            raise (PermanentFailure if exc.code >= 500 else TemporaryFailure)(
                f"{exc.code} {exc.message}") from exc
        except (OSError, aiosmtplib.SMTPException) as exc:
            client.close()
            raise TemporaryFailure(str(exc)) from exc
        self._idle.put_nowait(client)

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            try:
                await client.quit()
            except (OSError, aiosmtplib.SMTPException):
                client.close()
