"""Unguessable, single-use, expiring tokens (confirmations, moderation, unsubscribe links).

A token is 16 random base32 characters followed by 8 characters of an HMAC of them under
the site secret, all lowercase so that it survives mail systems that fold the case of
local parts. The HMAC lets us refuse a forged token without a database look-up; the row
makes it single-use and expiring.
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
