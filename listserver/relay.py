"""Sending through an SMTP relay: a small asyncio SMTP client of our own, pipelined.

The sender hands a whole batch to ``send_many``; ``outbound.concurrency`` connections
(kept open between batches) take mails from it in turn. A general-purpose client costs
more per mail than the relay does (aiosmtplib parses every address with the ``email``
package and waits for each reply: ~1,200 mails/s here), so this one does what list mail
needs and little else:

* With PIPELINING (RFC 2920, Postfix has it) a mail costs one write and one wait: the
  previous mail's content, then ``MAIL``, ``RCPT`` and ``DATA`` of the next, go out
  together, and their replies come back together. A server without it gets one command
  at a time.
* STARTTLS and AUTH (PLAIN, LOGIN) when configured; ``SMTPUTF8`` and ``BODY=8BITMIME``
  when a mail needs them and the server offers them.
* Reply codes decide the outcome, as before: 5xx for a mail is permanent for that mail
  only; 4xx and a lost connection are temporary, retried with backoff by the sender. A
  mail whose content was not sent yet when a connection broke is sent on another one at
  once; one whose content was sent but not acknowledged is tried again later (it may
  arrive twice, never zero times). A pooled connection that the relay has closed is
  replaced without a retry.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import re
import ssl
from collections.abc import Sequence

from .config import Config
from .sender import PermanentFailure, TemporaryFailure

log = logging.getLogger("listserver.outbound")

Item = tuple[str, str, bytes]   # envelope sender, recipient, content
TIMEOUT = 60.0                  # seconds for a reply or a connection
MAX_REPLY = 1 << 16
_LONE_LF = re.compile(rb"(?<!\r)\n")
_BAD_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")


class Disconnected(Exception):
    """The connection is gone (or never answered as SMTP should)."""


def failure(code: int, text: str) -> Exception:
    message = f"{code} {text}".strip()
    return PermanentFailure(message) if 500 <= code < 600 else TemporaryFailure(message)


class _Protocol(asyncio.Protocol):
    """Bytes in, replies out: every complete reply is queued as (code, text)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.replies: collections.deque[tuple[int, str]] = collections.deque()
        self.error: Exception | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._waiter: asyncio.Future[None] | None = None
        self._want = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit():
                self._fail(Disconnected(f"not an SMTP reply: {line[:100]!r}"))
                return
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                self.replies.append((int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        del buffer[:start]
        if len(buffer) > MAX_REPLY:
            self._fail(Disconnected("reply too long"))
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.error is None:
            self.error = Disconnected(f"connection lost: {exc}" if exc else
                                      "connection closed by the relay")
        self._wake()

    def _fail(self, error: Exception) -> None:
        self.error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (
                len(self.replies) >= self._want or self.error is not None):
            waiter.set_result(None)

    @property
    def alive(self) -> bool:
        return self.error is None and self.transport is not None and \
            not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.alive:
            raise self.error or Disconnected("connection closed")
        self.transport.write(data)  # type: ignore[union-attr]

    async def read(self, count: int, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
        """The next ``count`` replies."""
        while len(self.replies) < count:
            if self.error is not None:
                raise self.error
            self._want = count
            self._waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                self._fail(Disconnected(f"no reply in {timeout:.0f}s"))
                raise self.error from None  # type: ignore[misc]
            finally:
                self._waiter = None
        return [self.replies.popleft() for _ in range(count)]


class Connection:
    """One open SMTP session with the relay."""

    def __init__(self, protocol: _Protocol, extensions: dict[str, str]) -> None:
        self.protocol = protocol
        self.extensions = extensions
        self.pipelining = "PIPELINING" in extensions
        self.utf8 = "SMTPUTF8" in extensions
        self.eightbit = "8BITMIME" in extensions

    @classmethod
    async def open(cls, host: str, port: int, helo: str, starttls: bool = False,
                   username: str | None = None, password: str | None = None,
                   timeout: float = TIMEOUT) -> Connection:
        loop = asyncio.get_running_loop()
        transport, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(loop), host, port), timeout)
        try:
            await cls._expect(protocol, 220, timeout)           # the greeting
            extensions = await cls._ehlo(protocol, helo, timeout)
            if starttls:
                if "STARTTLS" not in extensions:
                    raise TemporaryFailure(f"relay {host}:{port} does not offer STARTTLS")
                protocol.write(b"STARTTLS\r\n")
                await cls._expect(protocol, 220, timeout)
                context = ssl.create_default_context()
                secure = await loop.start_tls(transport, protocol, context,
                                              server_hostname=host, ssl_handshake_timeout=timeout)
                protocol.transport = secure  # type: ignore[assignment]
                extensions = await cls._ehlo(protocol, helo, timeout)
            if username:
                await cls._login(protocol, extensions, username, password or "", timeout)
        except BaseException:
            transport.abort()
            raise
        return cls(protocol, extensions)

    @staticmethod
    async def _expect(protocol: _Protocol, code: int, timeout: float) -> str:
        [(got, text)] = await protocol.read(1, timeout)
        if got != code:
            raise failure(got, text)
        return text

    @classmethod
    async def _ehlo(cls, protocol: _Protocol, helo: str, timeout: float) -> dict[str, str]:
        protocol.write(f"EHLO {helo}\r\n".encode("ascii", "replace"))
        [(code, text)] = await protocol.read(1, timeout)
        if code != 250:
            protocol.write(f"HELO {helo}\r\n".encode("ascii", "replace"))
            await cls._expect(protocol, 250, timeout)
            return {}
        extensions = {}
        for line in text.split("\n")[1:]:
            keyword, _, params = line.strip().partition(" ")
            extensions[keyword.upper()] = params
        return extensions

    @classmethod
    async def _login(cls, protocol: _Protocol, extensions: dict[str, str], username: str,
                     password: str, timeout: float) -> None:
        mechanisms = extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            protocol.write(f"AUTH PLAIN {token}\r\n".encode())
        else:
            protocol.write(b"AUTH LOGIN\r\n")
            await cls._expect(protocol, 334, timeout)
            protocol.write(base64.b64encode(username.encode()) + b"\r\n")
            await cls._expect(protocol, 334, timeout)
            protocol.write(base64.b64encode(password.encode()) + b"\r\n")
        await cls._expect(protocol, 235, timeout)

    @property
    def alive(self) -> bool:
        return self.protocol.alive

    # ------------------------------------------------------------------ one mail
    def envelope(self, envelope_from: str, recipient: str, content: bytes) -> bytes:
        """``MAIL``, ``RCPT`` and ``DATA`` of one mail; PermanentFailure if it cannot go."""
        for address in (envelope_from, recipient):
            if _BAD_ADDRESS.search(address):
                raise PermanentFailure(f"not a valid address: {address!r}")
        params = ""
        if not (envelope_from.isascii() and recipient.isascii()):
            if not self.utf8:
                raise PermanentFailure("the address needs SMTPUTF8, which the relay lacks")
            params += " SMTPUTF8"
        if self.eightbit and not content.isascii():
            params += " BODY=8BITMIME"
        return (f"MAIL FROM:<{envelope_from}>{params}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
                .encode())

    @staticmethod
    def content(content: bytes) -> bytes:
        """The message as DATA sends it: CRLF line ends, dots doubled, the final dot."""
        if content.count(b"\n") != content.count(b"\r\n"):
            content = _LONE_LF.sub(b"\r\n", content)
        if content.startswith(b"."):
            content = b"." + content
        if b"\n." in content:  # every line after the first starts after a CRLF
            content = content.replace(b"\r\n.", b"\r\n..")
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        return content + b".\r\n"

    # ------------------------------------------------------------------ a stream of mail
    async def stream(self, items: Sequence[Item], queue: collections.deque[int],
                     results: list[Exception | None | object]) -> None:
        """Send the mails whose indexes ``queue`` holds, until it is empty.

        ``results[i]`` becomes None (accepted) or the failure. On a broken connection
        this raises Disconnected, after putting back into ``queue`` every mail whose
        content was not sent, and failing (temporarily) those sent but not acknowledged.
        """
        if self.pipelining:
            await self._pipelined(items, queue, results)
        else:
            while queue:
                index = queue.popleft()
                await self._lockstep(items, index, queue, results)

    async def _pipelined(self, items: Sequence[Item], queue: collections.deque[int],
                         results: list[Exception | None | object]) -> None:
        protocol = self.protocol
        pending: int | None = None    # a mail whose DATA got 354: its content goes next
        abandon = False               # ... but it had failed: send only the final dot
        reset = False                 # RSET before the next MAIL
        while True:
            index = queue.popleft() if queue else None
            out: list[bytes] = []
            expect: list[tuple[str, int]] = []
            if pending is not None:
                out.append(b".\r\n" if abandon else self.content(items[pending][2]))
                expect.append(("end", pending))
            if index is not None:
                try:
                    commands = self.envelope(*items[index])
                except PermanentFailure as exc:
                    results[index] = exc
                    commands = b""
                if commands:
                    if reset:
                        out.append(b"RSET\r\n")
                        expect.append(("rset", -1))
                        reset = False
                    out.append(commands)
                    expect += [("mail", index), ("rcpt", index), ("data", index)]
            if not out:
                if index is None:
                    return
                continue
            sent = False
            try:
                protocol.write(b"".join(out))
                sent = True
                replies = await protocol.read(len(expect))
            except Disconnected:
                for kind, i in expect:
                    if kind == "end" and sent and not abandon:
                        results[i] = TemporaryFailure("connection lost after the message "
                                                      "was sent; trying again later")
                    elif kind in ("end", "mail") and not (kind == "end" and abandon):
                        queue.appendleft(i)
                raise
            pending, abandon, failed = None, False, False
            for (kind, i), (code, text) in zip(expect, replies):
                if kind == "end":
                    if results[i] is _UNSENT:
                        results[i] = None if 200 <= code < 300 else failure(code, text)
                elif kind == "mail":
                    failed = not 200 <= code < 300
                    if failed:
                        results[i] = failure(code, text)
                elif kind == "rcpt":
                    if not failed and not 200 <= code < 300:
                        results[i] = failure(code, text)
                        failed = True
                elif kind == "data":
                    if code == 354:
                        pending, abandon = i, failed
                    else:
                        if not failed:
                            results[i] = failure(code, text)
                        reset = True

    async def _lockstep(self, items: Sequence[Item], index: int, queue: collections.deque[int],
                        results: list[Exception | None | object]) -> None:
        protocol = self.protocol
        envelope_from, recipient, content = items[index]
        try:
            commands = self.envelope(envelope_from, recipient, content).split(b"\r\n")[:3]
        except PermanentFailure as exc:
            results[index] = exc
            return
        sent = False
        try:
            for command in commands:
                protocol.write(command + b"\r\n")
                [(code, text)] = await protocol.read(1)
                if not (code == 354 if command == b"DATA" else 200 <= code < 300):
                    results[index] = failure(code, text)
                    protocol.write(b"RSET\r\n")
                    await protocol.read(1)
                    return
            protocol.write(self.content(content))
            sent = True
            [(code, text)] = await protocol.read(1)
        except Disconnected:
            if sent:
                results[index] = TemporaryFailure("connection lost after the message was "
                                                  "sent; trying again later")
            elif results[index] is _UNSENT:
                queue.appendleft(index)
            raise
        results[index] = None if 200 <= code < 300 else failure(code, text)

    async def quit(self) -> None:
        try:
            self.protocol.write(b"QUIT\r\n")
            await self.protocol.read(1, timeout=5)
        except (Disconnected, OSError):
            pass
        self.close()

    def close(self) -> None:
        transport = self.protocol.transport
        if transport is not None:
            transport.close()


_UNSENT = object()


class SmtpTransport:
    def __init__(self, config: Config) -> None:
        out = config.outbound
        self.host = str(out["host"])
        self.port = int(out["port"])
        self.username = str(out["username"]) or None
        self.password = os.environ.get("LISTSERVER_RELAY_PASSWORD") if self.username else None
        self.starttls = bool(out["starttls"])
        self.concurrency = max(1, int(out["concurrency"]))
        self.helo = config.domain
        self._idle: list[Connection] = []

    async def _connect(self) -> Connection:
        return await Connection.open(self.host, self.port, self.helo, self.starttls,
                                     self.username, self.password)

    async def _get(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.alive:
                return connection
            connection.close()
        return await self._connect()

    async def send(self, envelope_from: str, recipient: str, content: bytes) -> None:
        [error] = await self.send_many([(envelope_from, recipient, content)])
        if error is not None:
            raise error

    async def send_many(self, items: Sequence[Item]) -> list[Exception | None]:
        """Send a batch over up to ``concurrency`` connections; one result per mail."""
        results: list[Exception | None | object] = [_UNSENT] * len(items)
        queue = collections.deque(range(len(items)))
        unreachable: list[Exception] = []

        async def worker() -> None:
            attempts = 0
            while queue:
                try:
                    connection = await self._get()
                except (OSError, asyncio.TimeoutError, Disconnected, TemporaryFailure,
                        PermanentFailure) as exc:
                    unreachable.append(exc)
                    return  # the other connections may still send the rest
                try:
                    await connection.stream(items, queue, results)
                except Disconnected as exc:
                    connection.close()
                    attempts += 1
                    if attempts >= 3:  # a relay that keeps dropping us: later
                        unreachable.append(exc)
                        return
                    continue
                self._idle.append(connection)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(items)))))
        out: list[Exception | None] = []
        for result in results:
            if result is _UNSENT:
                why = unreachable[-1] if unreachable else "not sent"
                result = TemporaryFailure(f"relay {self.host}:{self.port} unreachable: {why}")
            out.append(result)  # type: ignore[arg-type]
        return out

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(connection.quit() for connection in idle))
