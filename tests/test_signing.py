"""The fast DKIM signer of outgoing mail (listserver.signing): its signatures verify with
dkimpy over messages that exercise relaxed canonicalisation, any change breaks them, and
the pool signs a batch in order."""

from __future__ import annotations

import dkim as dkimpy
import pytest

from listserver.dkim import RECOMMENDED_HEADERS, dns_txt_func, generate_keypair
from listserver.signing import Signer, relaxed_body

HEAD = (b"From: \"Kari via Blogg\" <blog@lists.example.org>\r\n"
        b"To: Per <per@example.net>\r\n"
        b"Subject: =?utf-8?q?Sosialt_entrepren=C3=B8rskap?=\r\n"
        b"Message-ID: <post-1@example.no>\r\n"
        b"List-Unsubscribe: <http://127.0.0.1:8080/unsubscribe/abc>,\r\n"
        b" <mailto:blog+unsubscribe@lists.example.org?subject=unsubscribe%20abc>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"Content-Type: multipart/alternative;\r\n\tboundary=\"=_ls1\"\r\n")
BODIES = [
    b"Status i Oslo kommune.\r\n",
    b"Trailing   spaces \t \r\nand\ttabs\r\n\r\n\r\n",     # WSP runs, empty lines at the end
    b"no final line break",
    b"",
    b"\r\n\r\n",
    b"--=_ls1\r\nContent-Type: text/plain\r\n\r\n.a dot line=\r\n more\r\n--=_ls1--\r\n",
]


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    return generate_keypair(2048)


@pytest.mark.parametrize("body", BODIES)
def test_signatures_verify_with_dkimpy(key: tuple[bytes, str], body: bytes) -> None:
    dns = dns_txt_func({"ls._domainkey.lists.example.org": key[1]})
    signer = Signer(key[0], "ls", "lists.example.org", RECOMMENDED_HEADERS)
    message = HEAD + b"Subject:   second \t  subject  \r\n\r\n" + body
    raw = signer(message)
    assert raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert dkimpy.verify(raw, dnsfunc=dns)
    # the same body hash as dkimpy's own signature of the same message
    theirs = dkimpy.sign(message, b"ls", b"lists.example.org", key[0],
                         canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from"])
    ours_bh = raw.split(b"bh=")[1].split(b";")[0]
    assert ours_bh == theirs.split(b"bh=")[1].split(b";")[0].replace(b"\r\n ", b"")
    for change in (b"Status", b"Per <per", b"unsubscribe/abc"):
        if change in raw:
            assert not dkimpy.verify(raw.replace(change, change.upper(), 1), dnsfunc=dns)


def test_an_added_from_breaks_the_signature(key: tuple[bytes, str]) -> None:
    dns = dns_txt_func({"ls._domainkey.lists.example.org": key[1]})
    raw = Signer(key[0], "ls", "lists.example.org")(HEAD + b"\r\nHei.\r\n")
    assert dkimpy.verify(raw, dnsfunc=dns)
    forged = raw.replace(b"From: ", b"From: Mallory <m@evil.example>\r\nFrom: ", 1)
    assert not dkimpy.verify(forged, dnsfunc=dns)  # From is oversigned


def test_line_ends_are_made_crlf(key: tuple[bytes, str]) -> None:
    dns = dns_txt_func({"ls._domainkey.lists.example.org": key[1]})
    raw = Signer(key[0], "ls", "lists.example.org")(HEAD.replace(b"\r\n", b"\n") + b"\nHei.\n")
    assert b"\r\n" in raw and raw.count(b"\n") == raw.count(b"\r\n")
    assert dkimpy.verify(raw, dnsfunc=dns)


def test_relaxed_body() -> None:
    assert relaxed_body(b"a  b \t\r\n\r\n \r\n") == b"a b\r\n"
    assert relaxed_body(b"") == b"" and relaxed_body(b"\r\n \r\n") == b""
    assert relaxed_body(b"x") == b"x\r\n"


def test_the_pool_signs_a_batch_in_order(key: tuple[bytes, str], database_url, tmp_path,
                                         make_app) -> None:
    from conftest import relay_config
    from listserver.signing import POOL_MIN, SigningPool
    (tmp_path / "dkim.pem").write_bytes(key[0])
    app = make_app(relay_config(database_url, tmp_path, 25, outbound={
        "dkim_key_file": "dkim.pem", "dkim_selector": "ls"}))
    pool = SigningPool(app, workers=2)
    try:
        contents = [HEAD + f"\r\nMail {n}.\r\n".encode() for n in range(POOL_MIN + 36)]
        signed = pool.sign_all(contents)
        assert pool._pool is not None  # a batch this big went to the worker processes
    finally:
        pool.close()
    dns = dns_txt_func({"ls._domainkey.lists.example.org": key[1]})
    assert len(signed) == len(contents)
    for n, raw in enumerate(signed):
        assert raw.endswith(f"\r\nMail {n}.\r\n".encode())
        assert dkimpy.verify(raw, dnsfunc=dns)
