"""Mail to the command addresses: ``+confirm-TOKEN``, ``+subscribe``, ``+unsubscribe``,
``+help``. Each handler returns ``(outcome, detail)`` for the message's record.

``HANDLERS`` maps a command to its handler; the subscription commands register themselves
from ``subscriptions`` so that this module stays about the dispatch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import moderation, tokens
from .errors import ListserverError

if TYPE_CHECKING:
    from .rules import Context

log = logging.getLogger("listserver.commands")

Handler = Callable[["Context"], tuple[str, str]]
HANDLERS: dict[str, Handler] = {}
CONFIRM_KINDS: dict[str, Callable[["Context", tokens.Token], tuple[str, str]]] = {}

APPROVE_WORDS = re.compile(r"\b(approve|approved|godkjenn|godkjent|ok|yes|ja)\b", re.I)
REJECT_WORDS = re.compile(r"\b(reject|rejected|avvis|avvist|discard|no|nei)\b", re.I)


def run(ctx: Context) -> tuple[str, str]:
    command = ctx.address.command
    handler = HANDLERS.get(command)
    if handler is None:
        return "rejected", f"the {command} command is not available"
    return handler(ctx)


def confirm(ctx: Context) -> tuple[str, str]:
    try:
        row = tokens.find(ctx.session, ctx.app.secret, ctx.address.token, now=ctx.app.now())
    except tokens.TokenError as exc:
        ctx.app.command_reply(ctx, "confirm_failed", why=exc.why)
        return "command", f"confirmation token {exc.why}"
    if row.list_name != ctx.lst.name or row.kind not in CONFIRM_KINDS:
        return "command", "confirmation token unknown"
    return CONFIRM_KINDS[row.kind](ctx, row)


def confirm_post(ctx: Context, row: tokens.Token) -> tuple[str, str]:
    try:
        moderation.approve(ctx.session, int(row.ref))
    except ListserverError as exc:
        return "command", f"post confirmation: {exc}"
    tokens.use(row, ctx.app.now())
    ctx.app.wake_worker()
    return "confirmation", f"author confirmed held post {row.ref}"


def _decision_text(ctx: Context) -> str:
    # Only what the moderator wrote, not the quoted notice (which names both words).
    text = ctx.parsed.new_text or ctx.parsed.text
    return "\n".join(line for line in text.splitlines() if not line.startswith(">"))[:500]


def moderate(ctx: Context, row: tokens.Token) -> tuple[str, str]:
    text = f"{ctx.parsed.subject}\n{_decision_text(ctx)}"
    reject = REJECT_WORDS.search(text)
    approve = APPROVE_WORDS.search(text)
    try:
        if reject and not approve:
            moderation.reject(ctx.session, int(row.ref), f"by {ctx.parsed.from_address}")
            decision = "rejected"
        elif approve and not reject:
            moderation.approve(ctx.session, int(row.ref))
            ctx.app.wake_worker()
            decision = "approved"
        else:
            return "command", "moderation reply said neither approve nor reject"
    except ListserverError as exc:
        return "command", f"moderation: {exc}"
    tokens.use(row, ctx.app.now())
    return "confirmation", f"held message {row.ref} {decision} by {ctx.parsed.from_address}"


HANDLERS["confirm"] = confirm
CONFIRM_KINDS["confirm-post"] = confirm_post
CONFIRM_KINDS["moderate"] = moderate
