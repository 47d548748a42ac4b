"""Bounce scores: who bounced, how much it counts, and when delivery stops.

A bounce reaches us at the VERP envelope sender ``NAME+bounces-TOKEN@`` of the mail that
failed (the signed token names the subscription, so a forwarded address that reports some
other address still maps back), or at ``NAME+bounces@``; then the failed addresses that
``bounces.analyse_bounce`` reads from it (RFC 3464 DSNs, flufl.bounce's detectors) are
matched against the list's subscribers. The relay refusing a mail for good (5xx), or the
sender giving up after ``outbound.max_retry_age``, counts the same way.

A permanent failure adds 1 to the subscription's score, a temporary one 0.5, at most once
per (UTC) day, as Mailman does: a server that refuses everything for a day costs one point,
not one per mail. A score older than ``bounce_reset_days`` starts again from 0. At
``bounce_threshold`` delivery is ``disabled`` and the subscriber gets a notice with a
confirmation that re-enables it (the subscribe confirmation: score back to 0).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import subscriptions
from .bounces import analyse_bounce
from .config import ListConfig
from .fanout import BOUNCES
from .models import Subscription

if TYPE_CHECKING:
    from .app import App
    from .rules import Context

log = logging.getLogger("listserver.bounces")

PERMANENT, TEMPORARY = 1.0, 0.5


def record(app: App, session: Session, lst: ListConfig, sub: Subscription,
           permanent: bool) -> str:
    """Count one bounce for ``sub``; a note for the message's record."""
    now = app.now()
    if sub.state not in ("active", "disabled"):
        return f"{sub.address} is {sub.state}: not counted"
    last = sub.last_bounce_at
    if last is not None and now - last > timedelta(days=lst.bounce_reset_days):
        sub.bounce_score = 0.0
    elif last is not None and last.date() == now.date():
        return f"{sub.address} already counted today (score {sub.bounce_score:g})"
    sub.bounce_score = (sub.bounce_score or 0.0) + (PERMANENT if permanent else TEMPORARY)
    sub.last_bounce_at = now
    note = f"{sub.address} score {sub.bounce_score:g}"
    if sub.state == "active" and sub.bounce_score >= lst.bounce_threshold:
        disable(app, session, lst, sub)
        note += ", delivery disabled"
    log.info("bounce from %s on %s: %s", sub.address, lst.name, note)
    return note


def disable(app: App, session: Session, lst: ListConfig, sub: Subscription) -> None:
    sub.state = "disabled"
    subscriptions.send_confirmation(app, session, lst, sub, "subscribe", "bounce_disabled",
                                    sub.mode)


def on_bounce(ctx: Context) -> str:
    """``App.bounce_handlers`` entry: score the subscriptions a bounce message is about."""
    report = analyse_bounce(ctx.message.raw)
    if not report.is_bounce:
        return "no failed address found: nothing counted"
    session, lst = ctx.session, ctx.lst
    verp = next((a.token for a in ctx.addresses if a.command == "bounces" and a.token), "")
    sub = subscriptions.from_signed(ctx.app, session, lst.name, verp, BOUNCES) if verp else None
    if sub is not None:
        permanent = sub.address in report.permanent or (
            sub.address not in report.temporary and bool(report.permanent))
        return record(ctx.app, session, lst, sub, permanent)
    failed = {a: True for a in report.permanent} | {a: False for a in report.temporary}
    subs = session.execute(select(Subscription).where(
        Subscription.list_name == lst.name,
        Subscription.address.in_(sorted(failed)))).scalars().all()
    if not subs:
        return "no subscriber matched: nothing counted"
    return "; ".join(record(ctx.app, session, lst, s, failed[s.address]) for s in subs)


def delivery_failed(app: App, session: Session, list_name: str, subscription_id: int,
                    error: str) -> None:
    """The sender's report of a mail refused for good or given up: a permanent bounce."""
    lst = app.config.lists.get(list_name)
    sub = session.get(Subscription, subscription_id)
    if lst is not None and sub is not None:
        record(app, session, lst, sub, permanent=True)


def install(app: App) -> None:
    app.bounce_handlers.append(on_bounce)
