"""Tests for listserver.bounces against real bounces (flufl.bounce's samples) and made-up DSNs."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from listserver import bounces
from listserver.bounces import BounceReport, analyse_bounce, looks_like_bounce

DATA = Path(__file__).parent / "data" / "bounces"
EXPECTED: dict[str, dict[str, list[str]]] = json.loads((DATA / "expected.json").read_text())
NOT_BOUNCES = {"groupwise_03.txt", "qmail_08.txt"}  # a human reply and an auto-reply

REPLY = b"""\
From: Kirstine <kirstine@example.net>
To: blog@lists.example.org
Subject: Re: Sosialt entreprenorskap: Status i Oslo kommune
Message-ID: <c1@example.net>
In-Reply-To: <post-1@example.no>
Date: Fri, 09 Mar 2018 09:02:00 +0100
Content-Type: text/plain; charset=utf-8

Takk for innlegget! My mail server once said "Delivery Status Notification" to me.
"""


def dsn(*blocks: str, report_type: str = "delivery-status") -> bytes:
    status = "Reporting-MTA: dns; mx.example.net\n\n" + "\n\n".join(blocks)
    return f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: blog+bounces@lists.example.org
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type={report_type}; boundary="B"

--B
Content-Type: text/plain

Sorry.

--B
Content-Type: message/delivery-status

{status}

--B
Content-Type: text/rfc822-headers

From: blog@lists.example.org
Subject: Sosialt entreprenorskap

--B--
""".encode()


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_bounces(name: str) -> None:
    expected = EXPECTED[name]
    report = analyse_bounce((DATA / name).read_bytes())
    assert report.permanent == frozenset(expected["permanent"])
    assert report.temporary == frozenset(expected["temporary"])
    assert report.is_bounce == bool(expected["permanent"] or expected["temporary"])
    assert report.detector == ("" if not report.is_bounce else report.detector)
    assert report.detector in (("dsn", "flufl") if report.is_bounce else ("",))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_bounces_look_like_bounces(name: str) -> None:
    msg = parse((DATA / name).read_bytes())
    assert looks_like_bounce(msg, None) == (name not in NOT_BOUNCES)


def test_every_sample_file_has_an_expectation() -> None:
    assert {p.name for p in DATA.glob("*.txt")} == set(EXPECTED)


def test_dsn_detector_is_used_for_rfc3464() -> None:
    assert analyse_bounce((DATA / "dsn_10.txt").read_bytes()).detector == "dsn"
    assert analyse_bounce((DATA / "postfix_01.txt").read_bytes()).detector == "flufl"


def test_plain_reply_is_not_a_bounce() -> None:
    assert analyse_bounce(REPLY) == BounceReport(False, frozenset(), frozenset(), "")
    assert not looks_like_bounce(parse(REPLY), "kirstine@example.net")


def test_dsn_mixed_actions() -> None:
    raw = dsn(
        "Final-Recipient: rfc822; Gone@Example.COM\nAction: failed\nStatus: 5.1.1",
        "Original-Recipient: rfc822;sub+alias@example.org\n"
        "Final-Recipient: rfc822; mailbox@forwarded.example\nAction: failed (bad mailbox)",
        "Final-Recipient: rfc822; <slow@example.com>\nAction: delayed\nStatus: 4.4.1",
        "Final-Recipient: rfc822; fine@example.com\nAction: delivered\nStatus: 2.0.0",
        "Final-Recipient: rfc822; both@example.com\nAction: delayed",
        "Final-Recipient: rfc822; both@example.com\nAction: failed",
        "Final-Recipient: x-local; not-an-address\nAction: failed",
    )
    report = analyse_bounce(raw)
    assert report == BounceReport(
        True,
        frozenset({"gone@example.com", "sub+alias@example.org", "both@example.com"}),
        frozenset({"slow@example.com"}),
        "dsn",
    )


def test_success_only_dsn_is_not_a_bounce_but_looks_like_one() -> None:
    raw = dsn("Final-Recipient: rfc822; fine@example.com\nAction: delivered\nStatus: 2.0.0")
    assert not analyse_bounce(raw).is_bounce
    assert looks_like_bounce(parse(raw), "")


def test_dsn_built_in_code_with_a_string_payload() -> None:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@mx.example.net"
    msg.set_content("Sorry.")
    msg.make_mixed()
    status = EmailMessage()
    status.set_payload("Reporting-MTA: dns; mx\n\nAction: failed\nFinal-Recipient: rfc822;a@b.ex\n")
    status["Content-Type"] = "message/delivery-status"
    msg.attach(status)
    assert bounces._from_dsn(msg) == ({"a@b.ex"}, set())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Content-Type: multipart/report; boundary=X\n\n--X\n\n--X--\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\n\n"
        b"--X\nContent-Type: message/delivery-status\n\n"
        b"Action: failed\nFinal-Recipient: \xff\n--X--\n",
    ],
)
def test_garbage_never_raises(raw: bytes) -> None:
    assert analyse_bounce(raw) == BounceReport(False, frozenset(), frozenset(), "")


def test_detector_exception_is_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: object) -> None:
        raise UnicodeDecodeError("ascii", b"\xff", 0, 1, "boom")

    monkeypatch.setattr(bounces, "all_failures", broken)
    assert not analyse_bounce((DATA / "postfix_01.txt").read_bytes()).is_bounce
    assert analyse_bounce((DATA / "dsn_10.txt").read_bytes()).is_bounce  # DSN layer unaffected


@pytest.mark.parametrize(
    ("headers", "sender", "expected"),
    [
        ("From: a@example.com\nSubject: hello", "", True),
        ("From: a@example.com\nSubject: hello", "<>", True),
        ("From: a@example.com\nSubject: hello", "MAILER-DAEMON@mx.example.com", True),
        ("From: a@example.com\nSubject: hello", "a@example.com", False),
        ("From: a@example.com\nSubject: hello", None, False),
        ("From: Mail Delivery System <Mailer-Daemon@mx.example>\nSubject: x", None, True),
        ("From: postmaster@example.com\nSubject: x", None, True),
        ("From: a@b.example\nContent-Type: multipart/report; boundary=Q", None, True),
        ("From: a@b.example\nSubject: Undelivered Mail Returned to Sender", None, True),
        ("From: a@b.example\nSubject: Delivery Status Notification (Failure)", None, True),
        ("From: a@b.example\nSubject: Mail delivery failed: returning message", None, True),
        ("From: a@b.example\nSubject: Returned mail: see transcript", None, True),
        ("From: a@b.example\nSubject: Unzustellbar: Hallo", None, True),
        ("From: a@b.example\nSubject: Non remis : Bonjour", None, True),
        ("From: a@b.example\nSubject: =?utf-8?q?Kan_ikke_leveres=3A_Hei?=", None, True),
        ("From: a@b.example\nSubject: Re: Sosialt entreprenorskap", None, False),
        ("From: broken <<<@@@\nSubject: \x00", None, False),
    ],
)
def test_looks_like_bounce(headers: str, sender: str | None, expected: bool) -> None:
    raw = (headers + "\n\nbody\n").encode()
    assert looks_like_bounce(parse(raw), sender) is expected
    assert looks_like_bounce(email.message_from_bytes(raw), sender) is expected  # compat32 too


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" <Anne.Person@Example.ORG> ", "anne.person@example.org"),
        ("mailto:a@b.example", "a@b.example"),
        ('"a@b.example".', "a@b.example"),
        ("not-an-address", None),
        ("a@b@c.example", None),
        ("two words@b.example", None),
        ("@b.example", None),
        ("a@localhost", None),
        ("j\ufffdrgen@example.com", None),
        ("j\udcc3\udcbcrgen@example.com", None),
    ],
)
def test_clean_address(value: str, expected: str | None) -> None:
    assert bounces._clean_address(value) == expected
