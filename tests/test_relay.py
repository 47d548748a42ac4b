"""The SMTP client of the relay transport: pipelined when the relay offers PIPELINING,
one command at a time when not, refusals per mail, dots and line ends in the content,
and a connection that breaks in the middle of a batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from listserver.relay import Connection, SmtpTransport
from listserver.sender import PermanentFailure, TemporaryFailure

from conftest import Sink, relay_config


class PipeliningSink(Sink):
    """The test relay, advertising PIPELINING (aiosmtpd reads commands one by one from its
    stream, so pipelined commands are answered in order, as RFC 2920 wants)."""

    pipelining = True
    drop_after: str | None = None   # close the connection after accepting this recipient

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.drop_after in envelope.rcpt_tos:
            self.drop_after = None
            server.transport.close()
        return reply


CONTENT = (b"From: List <blog@lists.example.org>\r\nSubject: Dots\r\n\r\n"
           b".starts with a dot\r\nmiddle\r\n..two dots\r\nlone LF\nend")


@pytest.fixture
def pipelining_sink() -> Any:
    sink = PipeliningSink().start()
    yield sink
    sink.stop()


def send(transport: SmtpTransport, items: list[tuple[str, str, bytes]]) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return await transport.send_many(items)
        finally:
            await transport.close()
    return asyncio.run(go())


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_batch_with_refusals(pipelining: bool, pipelining_sink: PipeliningSink,
                               database_url: str, tmp_path: Path) -> None:
    pipelining_sink.pipelining = pipelining
    pipelining_sink.refuse["gone@example.net"] = "550 5.1.1 no such user"
    pipelining_sink.refuse["slow@example.net"] = "451 4.3.0 try again later"
    config = relay_config(database_url, tmp_path, pipelining_sink.port,
                          outbound={"concurrency": 3})
    recipients = [f"r{n}@example.net" for n in range(40)]
    recipients[5], recipients[6], recipients[30] = ("gone@example.net", "slow@example.net",
                                                    "bad address@example.net")
    results = send(SmtpTransport(config), [("blog+bounces@lists.example.org", r, CONTENT)
                                           for r in recipients])
    assert isinstance(results[5], PermanentFailure) and "550" in str(results[5])
    assert isinstance(results[6], TemporaryFailure) and "451" in str(results[6])
    assert isinstance(results[30], PermanentFailure)
    assert [r for r in results if r is not None] == [results[5], results[6], results[30]]
    got = sorted(rcpts[0] for _, rcpts, _ in pipelining_sink.received)
    assert got == sorted(set(recipients) - {recipients[5], recipients[6], recipients[30]})
    for _, _, content in pipelining_sink.received:  # dots undone by the server, CRLF
        assert content == CONTENT.replace(b"lone LF\n", b"lone LF\r\n") + b"\r\n"


def test_the_client_pipelines_when_offered(pipelining_sink: PipeliningSink) -> None:
    async def go() -> tuple[bool, bool]:
        offered = await Connection.open("127.0.0.1", pipelining_sink.port, "test")
        await offered.quit()
        pipelining_sink.pipelining = False
        plain = await Connection.open("127.0.0.1", pipelining_sink.port, "test")
        await plain.quit()
        return offered.pipelining, plain.pipelining
    assert asyncio.run(go()) == (True, False)


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_connection_that_breaks_midway(pipelining: bool, pipelining_sink: PipeliningSink,
                                         database_url: str, tmp_path: Path) -> None:
    """What was sent and not acknowledged is tried again later; the rest goes at once."""
    pipelining_sink.pipelining = pipelining
    pipelining_sink.drop_after = "r3@example.net"
    config = relay_config(database_url, tmp_path, pipelining_sink.port,
                          outbound={"concurrency": 1})
    recipients = [f"r{n}@example.net" for n in range(10)]
    results = send(SmtpTransport(config), [("b@lists.example.org", r, CONTENT)
                                           for r in recipients])
    received = [rcpts[0] for _, rcpts, _ in pipelining_sink.received]
    assert sorted(received) == sorted(recipients)  # every one arrived, r3 included
    failed = [r for r, result in zip(recipients, results) if result is not None]
    # r3's 250 was lost with the connection: deferred (it may arrive twice, never zero
    # times); a mail that was in the pipeline behind it went on the next connection
    assert failed == ["r3@example.net"]
    assert isinstance(results[3], TemporaryFailure)


def test_relay_unreachable(database_url: str, tmp_path: Path) -> None:
    config = relay_config(database_url, tmp_path, Sink().port)
    results = send(SmtpTransport(config), [("b@lists.example.org", "r@example.net", CONTENT)])
    assert isinstance(results[0], TemporaryFailure) and "unreachable" in str(results[0])
