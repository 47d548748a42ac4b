"""The SMTP and LMTP receiver: validate recipients, enforce the size, store, answer.

The protocol is aiosmtpd's; the decisions about a recipient live in ``addresses``; what
happens to the stored message lives in ``process``. This module only checks and stores.

``FastSMTP`` replaces aiosmtpd's DATA reader, which reads the body a line at a time with a
debug-log call per line: ours reads up to each ``.\\r\\n`` and checks for the terminator,
which takes the per-line cost out of the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session as SMTPSession

from .addresses import parse_address
from .config import Config
from .intake import GroupCommitter, Incoming

log = logging.getLogger("listserver.smtp")

TERMINATOR = b"\r\n.\r\n"


class FastDataMixin:
    """A DATA command that reads the body in large chunks."""

    _reader: asyncio.StreamReader
    envelope: Envelope
    data_size_limit: int | None

    async def smtp_DATA(self, arg: str) -> None:
        smtp: Any = self
        if await smtp.check_helo_needed() or await smtp.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await smtp.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await smtp.push("501 5.5.4 Syntax: DATA")
            return
        await smtp.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit or 0
        buf = bytearray(b"\r\n")  # the CRLF before the body makes an empty body's end a match
        too_big = False
        reader = self._reader
        while True:
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)
            except asyncio.IncompleteReadError:
                log.info("connection lost during DATA")
                smtp._set_post_data_state()
                return
            if not too_big:
                buf += chunk
                if limit and len(buf) > limit + 5:
                    too_big = True
                    tail = bytes(buf[-4:])
                    buf = bytearray(tail)
            else:
                buf = bytearray(bytes(buf[-4:]) + chunk)
            if buf.endswith(TERMINATOR):
                break
        if too_big:
            await smtp.push("552 5.3.4 Message too big for this list")
            smtp._set_post_data_state()
            return
        body = bytes(buf[2:-3])  # drop our leading CRLF and the ".\r\n"
        # RFC 5321 4.5.2: remove the transparency dot.
        if b"\r\n." in body or body.startswith(b"."):
            body = body.replace(b"\r\n..", b"\r\n.")
            if body.startswith(b".."):
                body = body[1:]
        self.envelope.content = body
        self.envelope.original_content = body
        status = await smtp._call_handler_hook("DATA")
        smtp._set_post_data_state()
        await smtp.push(status if isinstance(status, str) else "250 OK")


class EnhancedCodesMixin:
    """aiosmtpd's size refusal in MAIL FROM lacks the RFC 3463 code clients look for."""

    async def push(self, status: str) -> None:
        if status.startswith("552 Error: message size exceeds"):
            status = "552 5.3.4 Message size exceeds fixed maximum message size"
        await super().push(status)  # type: ignore[misc]


CLOSING = b"421 4.3.2 Service shutting down\r\n"


class ConnectionMixin:
    """Connections that end cleanly in every case.

    * A connection that the event loop hands over once ``Server.stop`` has begun (accepted
      just before the listening socket closed) is told 421 and closed at once, so no
      session outlives the server.
    * A client that hangs up without QUIT: aiosmtpd keeps our half of the connection open
      (``eof_received`` returns True), and nothing references it any more, so the socket
      lingered until the garbage collector found it. We close it.
    """

    event_handler: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if getattr(self.event_handler, "closing", False):
            transport.write(CLOSING)  # type: ignore[attr-defined]
            transport.close()

    def eof_received(self) -> bool:
        super().eof_received()  # type: ignore[misc]
        return False  # the transport closes itself


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"\s*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)\Z", re.S)


class FastAddressMixin:
    """MAIL FROM and RCPT TO paths of the everyday form ``<local@domain>`` are read with one
    regular expression; anything else (quoted local parts, source routes, ``<>``) goes to
    aiosmtpd's parser, built on the ``email`` header parser, which costs a visible share
    of each message (two or more paths per message)."""

    local_part_limit: int

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_PATH.match(arg) if arg else None
        if m is None:
            return super()._getaddr(arg)  # type: ignore[misc,no-any-return]
        address = m.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, m.group(2)


class ListSMTP(ConnectionMixin, FastAddressMixin, EnhancedCodesMixin, FastDataMixin, SMTP):
    line_length_limit = 1 << 16  # the DATA reader's chunk bound, not a line rule


class ListLMTP(ConnectionMixin, FastAddressMixin, EnhancedCodesMixin, FastDataMixin, LMTP):
    line_length_limit = 1 << 16


class Handler:
    """aiosmtpd handler: RCPT checks the address, DATA stores and answers."""

    def __init__(self, config: Config, committer: GroupCommitter, lmtp: bool = False) -> None:
        self.config = config
        self.committer = committer
        self.lmtp = lmtp
        self.source = "lmtp" if lmtp else "smtp"
        self.closing = False    # set by Server.stop: no new transactions

    async def handle_MAIL(self, server: SMTP, session: SMTPSession, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.closing:
            return "421 4.3.2 Service shutting down, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: SMTPSession, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if parse_address(address, self.config) is None:
            log.info("refused recipient %s from %s", address, session.peer)
            return "550 5.1.1 No such list or address here"
        if len(envelope.rcpt_tos) >= int(self.config.smtp["max_recipients"]):
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession,
                          envelope: Envelope) -> str:
        raw = envelope.content
        assert isinstance(raw, bytes)
        by_list: dict[str, list[str]] = defaultdict(list)
        for rcpt in envelope.rcpt_tos:
            parsed = parse_address(rcpt, self.config)
            if parsed is not None:
                by_list[parsed.list_name].append(rcpt)
        items = [Incoming(name, raw, envelope.mail_from or "", rcpts, self.source)
                 for name, rcpts in by_list.items()]
        try:
            await self.committer.store(items)
        except Exception:
            # Nothing was committed: the client keeps the message and tries again.
            return self._reply("451 4.3.0 Temporary storage failure, try again later",
                               len(envelope.rcpt_tos))
        return self._reply("250 2.0.0 OK: queued", len(envelope.rcpt_tos))

    def _reply(self, line: str, count: int) -> str:
        # LMTP answers DATA once for every accepted recipient.
        return "\r\n".join([line] * count) if self.lmtp else line
