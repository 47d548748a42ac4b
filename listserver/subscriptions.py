"""Subscriptions: requests, confirmations, unsubscribing and delivery modes.

One set of operations for every way in (the command addresses in ``subcommands``, the web
forms in ``websubscribe``, the CLI). Every path but the CLI's ``--no-confirm`` is double
opt-in: a request makes (or keeps) a ``pending`` row and mails a single-use token; only
the confirmation (a reply to ``NAME+confirm-TOKEN@`` or the button behind the link)
makes it ``active``. A subscription that bounces is ``disabled`` and comes back the same
way. Rows are never deleted: unsubscribing sets ``unsubscribed``, so the signed
unsubscribe links in old mail keep working and answer "already unsubscribed".

At most one confirmation per address and list is mailed every ``THROTTLE`` (the web form
must not be a way to flood someone's mailbox).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import notices, tokens
from .addresses import list_address
from .config import ListConfig
from .models import Subscription, Token
from .urls import confirm_url, list_url

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.subscriptions")

THROTTLE = timedelta(minutes=5)
ADDRESS_RE = re.compile(r"[^@\s<>()\[\]\\,;:\"']+@[a-z0-9-]+(\.[a-z0-9-]+)+")
MODE_NAMES = {
    "en": {"all": "every post and every comment", "posts": "posts only",
           "digest": "a digest", "none": "no mail"},
    "nb": {"all": "alle innlegg og alle kommentarer", "posts": "bare innlegg",
           "digest": "et sammendrag", "none": "ingen e-post"},
}


def normalise(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def valid_address(address: str) -> bool:
    return len(address) <= 254 and ADDRESS_RE.fullmatch(normalise(address)) is not None


def find(session: Session, list_name: str, address: str) -> Subscription | None:
    return session.execute(select(Subscription).where(
        Subscription.list_name == list_name,
        Subscription.address == normalise(address))).scalar_one_or_none()


def members(session: Session, list_name: str) -> list[Subscription]:
    """Everyone who has not left: active, pending and disabled subscriptions."""
    return list(session.execute(select(Subscription).where(
        Subscription.list_name == list_name, Subscription.state != "unsubscribed")
        .order_by(Subscription.address)).scalars())


def values(app: App, lst: ListConfig, sub: Subscription | None = None,
           **extra: Any) -> dict[str, Any]:
    """What every subscription notice and page may use."""
    config = app.config
    return dict(sub=sub, mode_names=MODE_NAMES[lst.language], archive_url=list_url(
        config, lst.name), post_address=list_address(config, lst.name),
        request_address=list_address(config, lst.name, "request"),
        unsubscribe_address=list_address(config, lst.name, "unsubscribe"),
        subscribe_address=list_address(config, lst.name, "subscribe"),
        help_address=list_address(config, lst.name, "help"), **extra)


def notify(app: App, session: Session, lst: ListConfig, to: str, template: str, ref: str,
           reply_to: str | None = None, **extra: Any) -> None:
    """Queue a subscription notice (kind = template name: one per ref and recipient)."""
    notices.send(app, session, lst, template.replace("_", "-"), ref, to, template,
                 reply_to=reply_to, **values(app, lst, **extra))
    app.wake_sender()


def _recently_asked(app: App, session: Session, list_name: str, address: str,
                    kind: str) -> bool:
    return session.execute(select(Token.id).where(
        Token.list_name == list_name, Token.address == address, Token.kind == kind,
        Token.used_at.is_(None), Token.created_at > app.now() - THROTTLE).limit(1)
    ).first() is not None


def send_confirmation(app: App, session: Session, lst: ListConfig, sub: Subscription,
                      kind: str, template: str, mode: str = "") -> str:
    """Mail a confirmation token for ``kind`` ('subscribe', 'unsubscribe'); 'sent' or
    'throttled'."""
    if _recently_asked(app, session, lst.name, sub.address, kind):
        return "throttled"
    token = app.issue_token(session, lst.name, kind, address=sub.address, ref=mode)
    confirm = list_address(app.config, lst.name, "confirm", token)
    notify(app, session, lst, sub.address, template, f"token:{token}", reply_to=confirm,
           sub=sub, confirm=confirm, confirm_url=confirm_url(app.config, token), mode=mode,
           days=int(app.config.site["confirm_days"]))
    return "sent"


def request_subscription(app: App, session: Session, lst: ListConfig, address: str,
                         name: str = "", mode: str | None = None) -> tuple[str, Subscription]:
    """Ask ``address`` to confirm; ('already' | 'sent' | 'throttled', subscription)."""
    address = normalise(address)
    mode = mode or lst.default_mode
    sub = find(session, lst.name, address)
    if sub is not None and sub.state == "active":
        return "already", sub
    if sub is None:
        sub = Subscription(list_name=lst.name, address=address, name=name[:500], mode=mode,
                           state="pending", bounce_score=0.0, created_at=app.now())
        session.add(sub)
        session.flush()
    elif sub.state != "disabled":  # a disabled one stays disabled until confirmed
        sub.state = "pending"
        sub.name = name[:500] or sub.name
    return send_confirmation(app, session, lst, sub, "subscribe", "subscribe_confirm",
                             mode), sub


def set_mode(app: App, sub: Subscription, mode: str) -> None:
    """Change the delivery mode; a switch to digest starts the digest from now (no history)."""
    if mode == "digest" and sub.mode != "digest":
        sub.digest_since = app.now()
    sub.mode = mode


def activate(app: App, session: Session, sub: Subscription, mode: str | None = None) -> None:
    sub.state = "active"
    set_mode(app, sub, mode or sub.mode)
    sub.confirmed_at = app.now()
    sub.digest_since = app.now()
    sub.bounce_score = 0.0
    sub.last_bounce_at = None
    log.info("%s subscribed to %s (%s)", sub.address, sub.list_name, sub.mode)


def confirm(app: App, session: Session, lst: ListConfig, row: Token) -> tuple[str, Subscription]:
    """Carry out a confirmed 'subscribe' or 'unsubscribe' token (and use it up)."""
    tokens.use(row, app.now())
    sub = find(session, lst.name, row.address)
    if row.kind == "subscribe":
        if sub is None:  # cannot happen: the request made the row; be safe anyway
            sub = Subscription(list_name=lst.name, address=row.address, created_at=app.now())
            session.add(sub)
        activate(app, session, sub, row.ref or lst.default_mode)
        session.flush()
        notify(app, session, lst, sub.address, "welcome", f"token:{row.token}", sub=sub)
        return "subscribed", sub
    if sub is None or sub.state == "unsubscribed":
        return "not-subscribed", sub  # type: ignore[return-value]
    unsubscribe(app, session, sub)
    notify(app, session, lst, sub.address, "unsubscribed", f"token:{row.token}", sub=sub)
    return "unsubscribed", sub


def subscribe_now(app: App, session: Session, lst: ListConfig, address: str, name: str = "",
                  mode: str | None = None) -> tuple[str, Subscription]:
    """Subscribe without confirmation (the CLI's ``--no-confirm``); no mail is sent."""
    sub = find(session, lst.name, address)
    if sub is not None and sub.state == "active":
        if mode and mode != sub.mode:
            set_mode(app, sub, mode)
            return "mode-set", sub
        return "already", sub
    if sub is None:
        sub = Subscription(list_name=lst.name, address=normalise(address), name=name[:500],
                           created_at=app.now())
        session.add(sub)
    sub.name = name[:500] or sub.name or ""
    activate(app, session, sub, mode or lst.default_mode)
    session.flush()
    return "subscribed", sub


def unsubscribe(app: App, session: Session, sub: Subscription) -> bool:
    """Stop all mail to ``sub`` at once; False if it was not subscribed."""
    if sub.state == "unsubscribed":
        return False
    sub.state = "unsubscribed"
    log.info("%s unsubscribed from %s", sub.address, sub.list_name)
    return True


def from_signed(app: App, session: Session, list_name: str | None, token: str,
                purpose: str) -> Subscription | None:
    """The subscription a signed token (unsubscribe link, VERP) names, if it is genuine."""
    ident = tokens.signed_id(token)
    if ident is None:
        return None
    sub = session.get(Subscription, ident)
    if sub is None or (list_name is not None and sub.list_name != list_name):
        return None
    if not tokens.check_signed(app.secret, token, purpose, sub.list_name, sub.id, sub.address):
        return None
    return sub
