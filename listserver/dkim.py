"""DKIM signing and From-aligned verification (a thin, never-raising layer over dkimpy).

Why it exists: a new *post* is accepted from an author only when the message is really from the
author's domain. ``verify_from_domain`` answers exactly that question, DMARC-style with strict
alignment: a signature counts only when its ``d=`` is the From domain itself (a signature by a
parent domain or by the sender's ESP does not). Outgoing list mail is re-signed with ``sign``.

Hardening beyond what dkimpy checks on its own (dkimpy 1.1.8 verifies these signatures as valid):

* a signature whose ``h=`` does not cover From is ignored (RFC 6376 5.4: From MUST be signed);
* a signature with an ``l=`` body length is ignored: text appended after the signed length would
  otherwise be published under the author's name.

dkimpy calls its DNS hook as ``dnsfunc(name, timeout=...)``; the functions here accept a plain
``Callable[[bytes], bytes | None]`` and adapt it. Keys are generated with the ``openssl`` binary
(as dkimpy's own ``dknewkey`` does) because the ``cryptography`` package is not a dependency.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Mapping, Sequence

import dkim as _dkim
from dkim.util import parse_tag_value

DnsFunc = Callable[[bytes], bytes | None]

#: Headers worth signing on outgoing list mail. RFC 8058 requires List-Unsubscribe and
#: List-Unsubscribe-Post to be covered for one-click unsubscribe; "from" twice oversigns it,
#: so no second From can be added without breaking the signature.
RECOMMENDED_HEADERS: tuple[str, ...] = (
    "from", "from", "to", "cc", "reply-to", "subject", "date", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding", "list-id",
    "list-post", "list-help", "list-subscribe", "list-unsubscribe", "list-unsubscribe-post",
    "list-archive",
)  # fmt: skip


def _normalise_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _signature_headers(raw: bytes) -> list[bytes]:
    headers, _body = _dkim.rfc822_parse(raw)
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


def _adapt(dnsfunc: DnsFunc | None) -> Callable[..., bytes | None]:
    if dnsfunc is None:
        return _dkim.get_txt  # type: ignore[no-any-return]
    func = dnsfunc

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return func(name)

    return lookup


def verify_from_domain(raw: bytes, from_domain: str, dnsfunc: DnsFunc | None = None) -> bool:
    """True only if a DKIM signature with ``d=`` exactly ``from_domain`` verifies.

    Strict DMARC alignment: ``d=`` must equal the From domain (case-insensitive, IDNA-normalised);
    a parent domain does not count. Every DKIM-Signature is tried in order, so a valid aligned
    signature counts even below a broken or foreign one. Signatures that do not sign From or that
    carry ``l=`` are ignored (see the module docstring). ``from_domain`` must be the domain of the
    message's single From address; rejecting mail with several From fields is the caller's job.

    ``dnsfunc(name)`` returns the TXT record for e.g. ``b"sel._domainkey.example.org."`` or None;
    by default dkimpy's dnspython resolver is used. Never raises: malformed signatures, bad keys
    and DNS failures all give False.
    """
    try:
        want = _normalise_domain(from_domain)
        if not want:
            return False
        lookup = _adapt(dnsfunc)
        verifier = _dkim.DKIM(raw)
        for idx, value in enumerate(_signature_headers(raw)):
            try:
                tags = parse_tag_value(value)
                d = _normalise_domain(tags.get(b"d", b"").decode("ascii"))
                signed = {h.strip().lower() for h in tags.get(b"h", b"").split(b":")}
                if d != want or b"from" not in signed or b"l" in tags:
                    continue
                if verifier.verify(idx=idx, dnsfunc=lookup):
                    return True
            except Exception:  # noqa: BLE001 - one bad signature must not hide another
                continue
    except Exception:  # noqa: BLE001 - the contract is "never raises"
        return False
    return False


def sign(
    raw: bytes, selector: str, domain: str, private_key_pem: bytes, headers: Sequence[str]
) -> bytes:
    """Return the ``DKIM-Signature:`` header (folded, ending in CRLF) to prepend to ``raw``.

    rsa-sha256, relaxed/relaxed canonicalisation (survives the header re-folding that relays
    do). ``headers`` names the fields to sign and must include "from"; naming a field more often
    than it occurs oversigns it (see ``RECOMMENDED_HEADERS``). ``raw`` should use CRLF line ends,
    as on the wire. Raises ValueError on a bad key, a header list without From, or a header
    dkimpy refuses to sign (Received, Return-Path, Bcc, ...).
    """
    try:
        return bytes(
            _dkim.sign(
                raw,
                selector.encode("ascii"),
                _normalise_domain(domain).encode("ascii"),
                private_key_pem,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=b"rsa-sha256",
                include_headers=[h.lower().encode("ascii") for h in headers],
            )
        )
    except (_dkim.DKIMException, UnicodeError) as exc:
        raise ValueError(f"cannot DKIM-sign: {exc}") from exc


def _openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=True)
    except FileNotFoundError as exc:
        raise RuntimeError("generating DKIM keys needs the openssl command") from exc
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"openssl {args[0]} failed: {detail}") from exc
    return done.stdout


def generate_keypair(bits: int = 2048) -> tuple[bytes, str]:
    """Return (private key PEM, DNS TXT value ``"v=DKIM1; k=rsa; p=..."``) for a new RSA key.

    Publish the TXT value at ``<selector>._domainkey.<domain>``. Keep the PEM secret (it is
    unencrypted). Uses ``openssl genrsa``; 2048 bits takes around a tenth of a second.
    """
    if not 1024 <= bits <= 8192:
        raise ValueError("DKIM RSA keys must be 1024..8192 bits (2048 recommended)")
    private_pem = _openssl(["genrsa", str(bits)])
    public_der = _openssl(["pkey", "-pubout", "-outform", "DER"], stdin=private_pem)
    return private_pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public_der).decode("ascii")


def dns_txt_func(records: Mapping[str, str]) -> Callable[..., bytes | None]:
    """A DNS TXT lookup answering from ``records`` (for tests and offline use).

    Keys are names like ``"sel._domainkey.example.org"`` with or without the trailing dot,
    matched case-insensitively; unknown names give None (NXDOMAIN). The returned function also
    accepts dkimpy's ``timeout=`` keyword, so it can be handed to dkimpy directly.
    """
    table = {k.strip().rstrip(".").lower(): v.encode("ascii") for k, v in records.items()}

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        if isinstance(name, bytes):
            name = name.decode("ascii", errors="replace")
        return table.get(name.strip().rstrip(".").lower())

    return lookup
