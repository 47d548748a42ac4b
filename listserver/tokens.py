"""Tokens: stored ones that are single-use and expire, and stateless signed ones.

A stored token (confirmations, moderation decisions) is 16 random base32 characters
followed by 8 characters of an HMAC of them under the site secret, all lowercase so that it
survives mail systems that fold the case of local parts. The HMAC lets us refuse a forged
token without a database look-up; the row makes it single-use and expiring.

A signed token (``signed``/``signed_id``/``check_signed``: one-click unsubscribe links,
VERP envelope senders) needs no row: it is a subscription id in base 36 followed by 20 hex
digits (80 bits) of an HMAC over a purpose, the list, that id and the address.
It is checked by recomputing the HMAC for the subscription it names, so it never expires
and cannot be forged, and a mail to 100,000 subscribers writes no token rows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Token, utcnow

DEFAULT_TTL = timedelta(days=3)


def days(n: int) -> timedelta:
    return timedelta(days=n)


class TokenError(Exception):
    """Why a token cannot be used: 'unknown', 'expired' or 'used'."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def make_token(secret: bytes) -> str:
    random_part = _b32(secrets.token_bytes(10))
    return random_part + _b32(hmac.new(secret, random_part.encode(), hashlib.sha256).digest()[:5])


def is_authentic(secret: bytes, token: str) -> bool:
    token = token.lower()
    if len(token) != 24:
        return False
    expected = _b32(hmac.new(secret, token[:16].encode(), hashlib.sha256).digest()[:5])
    return hmac.compare_digest(expected, token[16:])


def issue(session: Session, secret: bytes, list_name: str, kind: str, *, address: str = "",
          ref: str = "", ttl: timedelta | None = DEFAULT_TTL,
          now: datetime | None = None) -> str:
    now = now or utcnow()
    token = make_token(secret)
    session.add(Token(token=token, list_name=list_name, kind=kind, address=address, ref=ref,
                      created_at=now, expires_at=(now + ttl) if ttl else None))
    return token


def find(session: Session, secret: bytes, token: str, kinds: tuple[str, ...] | None = None,
         now: datetime | None = None) -> Token:
    """The valid token row, or TokenError. Does not use it up: call ``use``."""
    token = token.lower()
    if not is_authentic(secret, token):
        raise TokenError("unknown")
    row = session.execute(select(Token).where(Token.token == token)).scalar_one_or_none()
    if row is None or (kinds is not None and row.kind not in kinds):
        raise TokenError("unknown")
    if row.used_at is not None:
        raise TokenError("used")
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        raise TokenError("expired")
    return row


def use(row: Token, now: datetime | None = None) -> None:
    row.used_at = now or utcnow()


SIGNED_MAC_LENGTH = 20
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _mac(secret: bytes, purpose: str, list_name: str, ident: int, address: str) -> str:
    data = f"{purpose}\0{list_name}\0{ident}\0{address.lower()}".encode()
    return hmac.digest(secret, data, "sha256")[:10].hex()


def signed(secret: bytes, purpose: str, list_name: str, ident: int, address: str) -> str:
    """A stateless token naming subscription ``ident`` of ``address`` for ``purpose``."""
    digits, n = "", ident
    while True:
        n, r = divmod(n, 36)
        digits = _B36[r] + digits
        if n == 0:
            break
    return digits + _mac(secret, purpose, list_name, ident, address)


def signed_id(token: str) -> int | None:
    """The subscription id a signed token names (not yet checked), or None."""
    token = token.lower()
    head = token[:-SIGNED_MAC_LENGTH]
    if not 1 <= len(head) <= 13 or any(c not in _B36 for c in head):
        return None
    return int(head, 36)


def check_signed(secret: bytes, token: str, purpose: str, list_name: str, ident: int,
                 address: str) -> bool:
    token = token.lower()
    expected = _mac(secret, purpose, list_name, ident, address)
    return signed_id(token) == ident and hmac.compare_digest(
        expected, token[-SIGNED_MAC_LENGTH:])
