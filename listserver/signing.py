"""DKIM-signing outgoing mail with the configured key (``outbound.dkim_key_file``).

The sender signs each mail as it goes out, after personalisation: the signature covers
``dkim.RECOMMENDED_HEADERS`` (From, Subject, Message-ID, both List-Unsubscribe headers and
the other list headers) for the list domain, ``d=`` equal to the From domain, so DMARC
aligns. A mail that cannot be signed goes out unsigned, with an error in the log.

Speed: every personalised copy needs its own signature (the To and List-Unsubscribe lines
and the unsubscribe link in the footer differ), and an RSA-2048 signature in pure Python
(dkimpy's) takes ~13 ms here. ``Signer`` does the same relaxed/relaxed rsa-sha256
signature (RFC 6376) with the RSA step in OpenSSL (the ``cryptography`` package): ~0.3 ms,
canonicalisation and hashing included. The sender spreads large batches over a pool of
processes, one per core (``SigningPool``). Signatures verify with dkimpy (tested).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .dkim import RECOMMENDED_HEADERS, sign
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.outbound")

POOL_MIN = 64   # batches at least this big are signed in the pool

_WSP = re.compile(rb"[ \t]+")
_LONE_LF = re.compile(rb"(?<!\r)\n")


def crlf(content: bytes) -> bytes:
    if content.count(b"\n") == content.count(b"\r\n"):
        return content
    return re.sub(rb"\r?\n", b"\r\n", content)


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs as one SP, none at line ends, no empty lines at the end."""
    if b"\t" in body or b"  " in body:  # (a regex over every byte costs more than RSA)
        body = b"\r\n".join(_WSP.sub(b" ", line) if b"\t" in line or b"  " in line else line
                             for line in body.split(b"\r\n"))
    body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    end = len(body)
    while end >= 2 and body[end - 2:end] == b"\r\n":
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2, without the CRLF: lowercase name, unfolded, WSP runs as one SP."""
    name, _, value = field.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def _fields(head: bytes) -> list[bytes]:
    out: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\r\n" + line
        elif line:
            out.append(line)
    return out


def _fold(tags: list[str], signature: str = "") -> str:
    """The tag list as a folded header value (lines under 78 characters)."""
    lines, line = [], "DKIM-Signature:"
    for tag in tags:
        if len(line) + len(tag) + 2 > 76:
            lines.append(line)
            line = ""
        line += " " + tag
    lines.append(line)
    value = "\r\n".join(lines)
    if signature:
        value += "".join("\r\n " + signature[i:i + 72] for i in range(0, len(signature), 72))
    return value


class Signer:
    """rsa-sha256, relaxed/relaxed, with the key parsed once and the RSA step in OpenSSL."""

    def __init__(self, key_pem: bytes, selector: str, domain: str,
                 headers: Sequence[str] = RECOMMENDED_HEADERS) -> None:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the DKIM key is not an RSA key")
        self._sign = lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        self.selector = selector
        self.domain = domain.strip().rstrip(".").lower().encode("idna").decode("ascii")
        self.headers = [h.lower() for h in headers]
        if "from" not in self.headers:
            raise ValueError("cannot DKIM-sign: the From header field must be signed")
        self._names = [h.encode("ascii") for h in self.headers]

    def header(self, content: bytes) -> bytes:
        """The ``DKIM-Signature:`` field (folded, ending in CRLF) for ``content`` (CRLF)."""
        split = content.find(b"\r\n\r\n")
        head, body = (content, b"") if split < 0 else (content[:split], content[split + 4:])
        if content.startswith(b"\r\n"):
            head, body = b"", content[2:]
        bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        by_name: dict[bytes, list[bytes]] = {}
        for field in _fields(head):
            by_name.setdefault(field.partition(b":")[0].rstrip(b" \t").lower(), []).append(field)
        signed = []
        for name in self._names:  # the last unused instance first; none: oversigned
            present = by_name.get(name)
            if present:
                signed.append(relaxed_header(present.pop()) + b"\r\n")
        tags = ["v=1;", "a=rsa-sha256;", "c=relaxed/relaxed;", f"d={self.domain};",
                f"i=@{self.domain};", "q=dns/txt;", f"s={self.selector};",
                f"t={int(time.time())};", "h=" + ":".join(self.headers) + ";",
                f"bh={bh};", "b="]
        unsigned = _fold(tags).encode("ascii")
        data = b"".join(signed) + relaxed_header(unsigned)
        signature = base64.b64encode(self._sign(data)).decode("ascii")
        return _fold(tags, signature).encode("ascii") + b"\r\n"

    def __call__(self, content: bytes) -> bytes:
        content = crlf(content)
        return self.header(content) + content


def _dkimpy_signer(key: bytes, selector: str, domain: str) -> Callable[[bytes], bytes]:
    """dkimpy's pure-Python signature: where the cryptography package is missing."""
    def signer(content: bytes) -> bytes:
        content = crlf(content)
        return sign(content, selector, domain, key, RECOMMENDED_HEADERS) + content
    return signer


def _load(app: App) -> tuple[bytes, str, str] | None:
    key_file = str(app.config.outbound["dkim_key_file"])
    if not key_file:
        return None
    try:
        key = app.config.resolve(key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"outbound.dkim_key_file: cannot read {key_file}: "
                          f"{exc.strerror}") from None
    return key, str(app.config.outbound["dkim_selector"]), app.config.domain


def _signer(key: bytes, selector: str, domain: str) -> Callable[[bytes], bytes]:
    try:
        fast = Signer(key, selector, domain)
    except ImportError:
        return _dkimpy_signer(key, selector, domain)
    except ValueError as exc:
        raise ConfigError(f"outbound.dkim_key_file: {exc}") from None

    def signer(content: bytes) -> bytes:
        try:
            return fast(content)
        except (ValueError, UnicodeError) as exc:
            log.error("DKIM signing failed, sending unsigned: %s", exc)
            return content
    return signer


def make_signer(app: App) -> Callable[[bytes], bytes] | None:
    """A function that DKIM-signs a mail, or None when no key is configured."""
    loaded = _load(app)
    return None if loaded is None else _signer(*loaded)


# ---------------------------------------------------------------------- the pool
_POOL_SIGNER: Callable[[bytes], bytes] | None = None


def _pool_start(key: bytes, selector: str, domain: str) -> None:
    global _POOL_SIGNER
    _POOL_SIGNER = _signer(key, selector, domain)


def _pool_sign(contents: list[bytes]) -> list[bytes]:
    assert _POOL_SIGNER is not None
    return [_POOL_SIGNER(c) for c in contents]


class SigningPool:
    """Signs batches on every core: ``sign_all(contents)`` keeps the order.

    Worker processes are started (spawned: safe from a threaded server) on the first
    batch of at least ``POOL_MIN`` mails; smaller ones are signed in this process."""

    def __init__(self, app: App, workers: int | None = None) -> None:
        loaded = _load(app)
        assert loaded is not None
        self._args = loaded
        self.sign = _signer(*loaded)
        self.workers = workers or os.cpu_count() or 1
        self._pool: Any = None

    def sign_all(self, contents: list[bytes]) -> list[bytes]:
        if self.workers < 2 or len(contents) < POOL_MIN:
            return [self.sign(c) for c in contents]
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_start, initargs=self._args)
        size = -(-len(contents) // (self.workers * 4))
        chunks = [contents[i:i + size] for i in range(0, len(contents), size)]
        try:
            return [c for signed in self._pool.map(_pool_sign, chunks) for c in signed]
        except Exception:  # a worker died (killed, out of memory): sign here, new pool later
            log.exception("DKIM signing pool failed; signing this batch in the sender")
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False, cancel_futures=True)
            return [self.sign(c) for c in contents]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
