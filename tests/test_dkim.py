"""Tests for listserver.dkim: signing, strictly aligned verification, offline DNS."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import dkim as dkimpy
import pytest
from dkim.crypto import parse_pem_private_key

from listserver import dkim

MESSAGE = (
    b"From: Ivar <ivar@example.no>\r\n"
    b"To: blog@lists.example.org\r\n"
    b"Subject: Sosialt entreprenorskap\r\n"
    b"Date: Fri, 09 Mar 2018 09:02:00 +0100\r\n"
    b"Message-ID: <post-1@example.no>\r\n"
    b"\r\n"
    b"Status i Oslo kommune.\r\n"
)
HEADERS = ("from", "to", "subject", "date", "message-id")


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    return dkim.generate_keypair()


@pytest.fixture(scope="module")
def other_key() -> tuple[bytes, str]:
    return dkim.generate_keypair(1024)


@pytest.fixture(scope="module")
def dns(key: tuple[bytes, str], other_key: tuple[bytes, str]) -> dkim.DnsFunc:
    return dkim.dns_txt_func(
        {
            "sel._domainkey.example.no.": key[1],
            "sel._domainkey.mail.example.no": key[1],
            "other._domainkey.evil.example": other_key[1],
        }
    )


def signed(key: tuple[bytes, str], domain: str = "example.no", selector: str = "sel") -> bytes:
    return dkim.sign(MESSAGE, selector, domain, key[0], HEADERS) + MESSAGE


def test_generate_keypair_shapes(key: tuple[bytes, str]) -> None:
    private, txt = key
    assert b"PRIVATE KEY-----" in private
    assert txt.startswith("v=DKIM1; k=rsa; p=MII")
    assert " " not in txt.partition("p=")[2]


def test_generate_keypair_refuses_weak_keys() -> None:
    with pytest.raises(ValueError):
        dkim.generate_keypair(512)


def test_sign_returns_one_header_to_prepend(key: tuple[bytes, str]) -> None:
    header = dkim.sign(MESSAGE, "sel", "example.no", key[0], HEADERS)
    assert header.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.no;")
    assert header.endswith(b"\r\n")
    assert b"s=sel;" in header
    assert not MESSAGE.startswith(b"DKIM")  # the message itself is left alone


def test_round_trip(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    raw = signed(key)
    assert dkim.verify_from_domain(raw, "example.no", dns)
    assert dkim.verify_from_domain(raw, "EXAMPLE.no.", dns)  # case and trailing dot


def test_relaxed_canonicalisation_survives_refolding(
    key: tuple[bytes, str], dns: dkim.DnsFunc
) -> None:
    old = b"Subject: Sosialt entreprenorskap"
    raw = signed(key).replace(old, b"Subject:  Sosialt\r\n entreprenorskap")
    assert dkim.verify_from_domain(raw, "example.no", dns)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Status i Oslo kommune.", b"Status i Bergen kommune."),
        (b"Subject: Sosialt", b"Subject: Asosialt"),
        (b"From: Ivar <ivar@example.no>", b"From: Ivar <ivar@example.no>\r\nFrom: x@evil.example"),
    ],
    ids=["body", "subject", "second-from"],
)
def test_tampering_fails(
    key: tuple[bytes, str], dns: dkim.DnsFunc, old: bytes, new: bytes
) -> None:
    raw = signed(key)
    assert old in raw
    assert not dkim.verify_from_domain(raw.replace(old, new, 1), "example.no", dns)


def test_signature_by_another_domain_is_not_enough(
    other_key: tuple[bytes, str], dns: dkim.DnsFunc
) -> None:
    raw = signed(other_key, domain="evil.example", selector="other")
    assert dkim.verify_from_domain(raw, "evil.example", dns)  # valid in itself ...
    assert not dkim.verify_from_domain(raw, "example.no", dns)  # ... but not aligned


def test_alignment_is_strict(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    assert not dkim.verify_from_domain(signed(key, domain="example.no"), "mail.example.no", dns)
    assert not dkim.verify_from_domain(signed(key, domain="mail.example.no"), "example.no", dns)


def test_no_signature(dns: dkim.DnsFunc) -> None:
    assert not dkim.verify_from_domain(MESSAGE, "example.no", dns)


@pytest.mark.parametrize(
    "garbage",
    [
        b"DKIM-Signature: this is not a signature\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.no; s=sel; h=from; bh=!!; b=??\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha999; d=example.no; s=sel; h=from; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.no; s=nokey; h=from; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: d=\xff\xfe; s=\x00\r\n",
    ],
)
def test_garbage_signature_is_false_not_an_error(
    key: tuple[bytes, str], dns: dkim.DnsFunc, garbage: bytes
) -> None:
    assert not dkim.verify_from_domain(garbage + MESSAGE, "example.no", dns)
    # A broken signature above a good one does not hide the good one.
    assert dkim.verify_from_domain(garbage + signed(key), "example.no", dns)


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe", b"no headers at all", b":\r\n\r\n"])
def test_garbage_message(raw: bytes, dns: dkim.DnsFunc) -> None:
    assert not dkim.verify_from_domain(raw, "example.no", dns)


def test_bad_from_domain_argument(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    assert not dkim.verify_from_domain(signed(key), "", dns)
    assert not dkim.verify_from_domain(signed(key), "a..b\udcff", dns)


def test_dns_failures_are_false(key: tuple[bytes, str]) -> None:
    raw = signed(key)

    def boom(name: bytes) -> bytes | None:
        raise OSError("network is down")

    assert not dkim.verify_from_domain(raw, "example.no", boom)
    assert not dkim.verify_from_domain(raw, "example.no", dkim.dns_txt_func({}))
    bad = dkim.dns_txt_func({"sel._domainkey.example.no": "v=DKIM1; k=rsa; p=bm90IGEga2V5"})
    assert not dkim.verify_from_domain(raw, "example.no", bad)
    revoked = dkim.dns_txt_func({"sel._domainkey.example.no": "v=DKIM1; k=rsa; p="})
    assert not dkim.verify_from_domain(raw, "example.no", revoked)


def test_default_resolver_is_dkimpys(
    key: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bytes] = []

    def fake_get_txt(name: bytes, timeout: float = 5) -> bytes:
        asked.append(name)
        return key[1].encode()

    monkeypatch.setattr(dkimpy, "get_txt", fake_get_txt)
    assert dkim.verify_from_domain(signed(key), "example.no")
    assert asked == [b"sel._domainkey.example.no."]


def test_signature_without_from_is_ignored(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    # dkimpy refuses to *create* such a signature but happily *verifies* one (RFC 6376 5.4
    # says From MUST be signed). Build one with dkimpy's internals to prove we reject it.
    signer = dkimpy.DKIM(MESSAGE)
    signer.hasher = hashlib.sha256
    body_hash = base64.b64encode(hashlib.sha256(b"Status i Oslo kommune.\r\n").digest())
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", b"example.no"),
        (b"s", b"sel"), (b"h", b"subject"), (b"bh", body_hash), (b"b", b"0" * 60),
    ]  # fmt: skip
    policy = dkimpy.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    value = signer.gen_header(
        fields, (b"subject",), policy, b"DKIM-Signature", parse_pem_private_key(key[0])
    )
    raw = b"DKIM-Signature: " + value + MESSAGE
    assert dkimpy.verify(raw, dnsfunc=dns)  # dkimpy alone says "valid"
    assert not dkim.verify_from_domain(raw, "example.no", dns)


def test_body_length_signature_is_ignored(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    header = dkimpy.sign(
        MESSAGE, b"sel", b"example.no", key[0], include_headers=list(HEADERS), length=True
    )
    raw = header + MESSAGE + b"Appended by someone else: buy pills.\r\n"
    assert dkimpy.verify(raw, dnsfunc=dns)  # still "valid" for dkimpy
    assert not dkim.verify_from_domain(raw, "example.no", dns)


def test_sign_rejects_bad_input(key: tuple[bytes, str]) -> None:
    with pytest.raises(ValueError, match="From"):
        dkim.sign(MESSAGE, "sel", "example.no", key[0], ["subject"])
    with pytest.raises(ValueError):
        dkim.sign(MESSAGE, "sel", "example.no", key[0], ["from", "received"])
    with pytest.raises(ValueError):
        dkim.sign(MESSAGE, "sel", "example.no", b"not a key", HEADERS)


def test_recommended_headers_oversign_from(key: tuple[bytes, str], dns: dkim.DnsFunc) -> None:
    raw = dkim.sign(MESSAGE, "sel", "example.no", key[0], dkim.RECOMMENDED_HEADERS) + MESSAGE
    assert dkim.verify_from_domain(raw, "example.no", dns)
    # List-Unsubscribe was signed as absent, so adding one later breaks the signature.
    added = raw.replace(b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example/>\r\n\r\n", 1)
    assert not dkim.verify_from_domain(added, "example.no", dns)


def test_dns_txt_func_lookup() -> None:
    lookup = dkim.dns_txt_func({"s._domainkey.Example.org": "v=DKIM1; p=x"})
    assert lookup(b"s._domainkey.example.org.") == b"v=DKIM1; p=x"
    assert lookup(b"s._domainkey.example.org") == b"v=DKIM1; p=x"
    assert lookup(b"S._DOMAINKEY.EXAMPLE.ORG.") == b"v=DKIM1; p=x"
    assert lookup(b"t._domainkey.example.org.") is None
    assert lookup(b"s._domainkey.example.org.", timeout=1) == b"v=DKIM1; p=x"


def test_generate_keypair_without_openssl(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("openssl")

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(RuntimeError, match="openssl"):
        dkim.generate_keypair()


def test_generate_keypair_openssl_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(args: list[str], **kwargs: object) -> None:
        raise subprocess.CalledProcessError(1, args, b"", b"bad things")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="bad things"):
        dkim.generate_keypair()
