"""Classification and moderation rules, and the chain that orders them.

A rule is a small object with a ``name`` and ``check(ctx)`` that returns a reason when it
matches, or None. ``CHAIN`` is the table of ``(rule, action)`` rows, tried in order; the
first rule that matches decides, and ``process`` carries the action out. A new policy is a
new row here, not a new ``if`` somewhere else (Mailman's rules and chains).
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from . import autoreply, bounces
from .addresses import ListAddress
from .config import ListConfig
from .dkim import verify_from_domain
from .models import Message
from .parse import ParsedMessage
from .threader import Placement, is_reply, place

if TYPE_CHECKING:
    from .app import App


@dataclass
class Context:
    app: App
    session: Session
    message: Message
    parsed: ParsedMessage
    lst: ListConfig
    addresses: list[ListAddress]
    approved: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> ListAddress:
        """The most specific of the list addresses the message was sent to."""
        order = ("confirm", "bounces", "owner", "subscribe", "unsubscribe", "help", "request",
                 "post", "reply", "")
        return min(self.addresses, key=lambda a: order.index(a.command)
                   if a.command in order else len(order))

    @cached_property
    def email(self) -> EmailMessage:
        if self.parsed.email is not None:  # parsed once already, in parse_message
            return self.parsed.email  # type: ignore[no-any-return]
        # The header rules need the headers only: skip parsing the body a second time.
        msg = BytesHeaderParser(policy=email.policy.compat32).parsebytes(self.message.raw)
        return msg  # type: ignore[return-value]

    @cached_property
    def placement(self) -> Placement:
        return place(self.session, self.message.list_name, self.message_id, self.parsed,
                     self.address)

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def is_reply(self) -> bool:
        return is_reply(self.parsed, self.address)

    @property
    def from_author(self) -> bool:
        return self.parsed.from_address in self.lst.authors


class Rule(Protocol):
    name: str

    def check(self, ctx: Context) -> str | None: ...


class SentTo:
    """The message was sent to one of the command addresses."""

    def __init__(self, name: str, *commands: str) -> None:
        self.name = name
        self.commands = commands

    def check(self, ctx: Context) -> str | None:
        command = ctx.address.command
        return f"sent to the {command} address" if command in self.commands else None


class LooksLikeBounce:
    name = "bounce"

    def check(self, ctx: Context) -> str | None:
        if bounces.looks_like_bounce(ctx.email, ctx.message.envelope_from):
            return "a bounce or delivery status notification"
        return None


class Loop:
    name = "loop"

    def check(self, ctx: Context) -> str | None:
        ours = f"{ctx.lst.name}.{ctx.app.config.domain}"
        if ctx.parsed.list_id == ours:
            return f"carries this list's own List-Id <{ours}>: a mail loop"
        return None


class AutoReply:
    name = "auto-reply"

    def check(self, ctx: Context) -> str | None:
        return autoreply.auto_reply_reason(ctx.email, ctx.message.envelope_from)


class NoSender:
    name = "no-sender"

    def check(self, ctx: Context) -> str | None:
        return None if ctx.parsed.from_address else "no usable From address"


# Statements built once (with bind parameters): building them per message is a visible
# part of processing's cost.
EARLIER_SAME_ID = select(Message.id).where(
    Message.list_name == bindparam("list_name"), Message.message_id == bindparam("message_id"),
    Message.id < bindparam("before")).limit(1)


class DuplicateMessageId:
    name = "duplicate-message-id"

    def check(self, ctx: Context) -> str | None:
        if not ctx.message.has_message_id:
            return None
        earlier = ctx.session.execute(EARLIER_SAME_ID, {
            "list_name": ctx.message.list_name, "message_id": ctx.message.message_id,
            "before": ctx.message.id}).first()
        return "duplicate Message-ID with different content" if earlier else None


class ProvenAuthorPost:
    """A new post from an author, proven by the secret address or a DKIM signature."""

    name = "author-post"

    def check(self, ctx: Context) -> str | None:
        if ctx.is_reply or not ctx.from_author:
            return None
        if any(a.command == "post" for a in ctx.addresses):
            return "sent by an author to the secret posting address"
        domain = ctx.parsed.from_address.rpartition("@")[2]
        if verify_from_domain(ctx.message.raw, domain, dnsfunc=ctx.app.dns_txt):
            return f"DKIM signature of {domain} verified"
        if ctx.approved:
            return "approved by a moderator"
        return None


class UnprovenAuthorPost:
    name = "author-unproven"

    def check(self, ctx: Context) -> str | None:
        if ctx.is_reply or not ctx.from_author:
            return None
        return "new post in an author's name without proof; confirmation sent to the author"


class ReplyToKnown:
    name = "reply"

    def check(self, ctx: Context) -> str | None:
        if not ctx.is_reply or ctx.placement.target is None:
            return None
        return f"reply to {ctx.placement.target.message_id} (by {ctx.placement.how})"


class ReplyToUnknown:
    name = "reply-to-unknown"

    def check(self, ctx: Context) -> str | None:
        if not ctx.is_reply:
            return None
        wanted = ctx.placement.wanted
        return f"reply to a message not published here ({wanted or 'no known parent'})"


class ApprovedThread:
    """A moderator approved a message that has nothing to hang under: a post of its own."""

    name = "approved"

    def check(self, ctx: Context) -> str | None:
        return "approved by a moderator" if ctx.approved else None


class NewThreadFromNonAuthor:
    name = "not-an-author"

    def check(self, ctx: Context) -> str | None:
        return f"new thread from {ctx.parsed.from_address}, who is not an author"


class Imported:
    """Rows for ``listserver import`` (``message.source == 'import'``): an archive is history.

    An imported thread root needs no author rights, nothing is held for a moderator (so no
    notices), and neither the list's own List-Id (a loop when live) nor the mbox From_ line
    (no SMTP envelope, so it may look like a null sender) says anything about an archive. A reply whose parent comes later in the
    file waits for it quietly; at the end of the import (``notes['import'] == 'final'``)
    what still waits becomes a post of its own. A duplicate Message-ID with other content is
    a post under a new Message-ID.
    """

    name = "import"

    def applies(self, ctx: Context) -> bool:
        return ctx.message.source == "import"

    def check(self, ctx: Context) -> str | None:
        return "imported" if self.applies(ctx) else None


class ImportDuplicateMessageId(Imported):
    name = "import-duplicate-message-id"

    def check(self, ctx: Context) -> str | None:
        if not self.applies(ctx):
            return None
        reason = DuplicateMessageId().check(ctx)
        return f"imported: {reason}; a post under a new Message-ID" if reason else None


class ImportReply(Imported):
    name = "import-reply"

    def check(self, ctx: Context) -> str | None:
        if not self.applies(ctx) or not ctx.is_reply or ctx.placement.target is None:
            return None
        return f"imported reply to {ctx.placement.target.message_id} (by {ctx.placement.how})"


class ImportReplyWaits(Imported):
    name = "import-reply-waits"

    def check(self, ctx: Context) -> str | None:
        if not self.applies(ctx) or not ctx.is_reply or ctx.notes.get("import") == "final":
            return None
        return f"imported reply to {ctx.placement.wanted}, not imported yet: waits for it"


class ImportRoot(Imported):
    name = "import-root"

    def check(self, ctx: Context) -> str | None:
        if not self.applies(ctx):
            return None
        if ctx.is_reply:
            return "imported reply to a message that is not in the archive: a post of its own"
        return "imported thread root (no author rights needed)"


# (rule, action). Actions: bounce, owner, command, discard, reject, hold, wait, post,
# comment, confirm-post. Hold actions are skipped for messages a moderator approved.
CHAIN: list[tuple[Rule, str]] = [
    (SentTo("bounces-address", "bounces"), "bounce"),
    (ImportDuplicateMessageId(), "post"),
    (ImportReply(), "comment"),
    (ImportReplyWaits(), "wait"),
    (ImportRoot(), "post"),
    (LooksLikeBounce(), "bounce"),
    (Loop(), "discard"),
    (AutoReply(), "discard"),
    (SentTo("owner-address", "owner"), "owner"),
    (SentTo("command", "confirm", "subscribe", "unsubscribe", "help", "request"), "command"),
    (NoSender(), "reject"),
    (DuplicateMessageId(), "hold"),
    (ProvenAuthorPost(), "post"),
    (UnprovenAuthorPost(), "confirm-post"),
    (ReplyToKnown(), "comment"),
    (ReplyToUnknown(), "hold"),
    (ApprovedThread(), "post"),
    (NewThreadFromNonAuthor(), "hold"),
]

HOLD_ACTIONS = frozenset({"hold", "wait", "confirm-post"})


def decide(ctx: Context) -> tuple[str, str, str]:
    """(rule name, action, reason) of the first matching row."""
    for rule, action in CHAIN:
        if ctx.approved and action in HOLD_ACTIONS:
            continue
        reason = rule.check(ctx)
        if reason is not None:
            return rule.name, action, reason
    raise AssertionError("the chain ends with a rule that always matches")
