"""The fast reading of MAIL FROM / RCPT TO paths gives exactly what aiosmtpd's parser
gives, for the everyday form and for every odd one it hands over."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from listserver.smtp import ListLMTP, ListSMTP

PATHS = [
    "<kari@example.net>",
    "<kari@example.net> SIZE=4096 BODY=8BITMIME",
    " <x.y+z@lists.example.org>",
    "<blog+reply-0a1b2c3d4e5f6a7b@lists.example.org>",
    "<>",
    '<"Kari Nordmann"@example.net>',
    "<@relay.example:kari@example.net>",
    "kari@example.net",
    "<a..b@example.net>",
    "<kari@example.net",
    "<kari@[127.0.0.1]>",
    "<kåri@example.net>",
    "<" + "x" * 80 + "@example.net>",
    "",
]


@pytest.mark.parametrize("cls", [ListSMTP, ListLMTP])
@pytest.mark.parametrize("path", PATHS)
def test_same_as_aiosmtpd(cls: type[SMTP], path: str) -> None:
    class Handler:
        pass
    ours, theirs = cls(Handler()), SMTP(Handler())
    assert ours._getaddr(path) == theirs._getaddr(path)


def test_local_part_limit_still_applies() -> None:
    class Handler:
        pass
    ours, theirs = ListSMTP(Handler()), SMTP(Handler())
    ours.local_part_limit = theirs.local_part_limit = 64
    long = "<" + "x" * 65 + "@example.net>"
    assert ours._getaddr(long) == theirs._getaddr(long) == (None, None)
