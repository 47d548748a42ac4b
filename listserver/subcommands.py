"""Subscription commands by email: ``NAME+subscribe@``, ``NAME+unsubscribe@``,
``NAME+help@``, ``NAME+request@`` and the confirmations they start.

* ``+subscribe``: the From address asks to subscribe; a word naming a mode in the subject
  (``posts``, ``digest``, ...) picks it. Answered with a confirmation, or "already
  subscribed".
* ``+unsubscribe``: with a signed unsubscribe token in the subject or body (the mailto in
  ``List-Unsubscribe`` carries one) the subscription it names ends at once; otherwise the
  From address is asked to confirm (a forged From cannot unsubscribe anyone).
* ``+help``: the commands, and the sender's own subscription.
* ``+request``: Mailman-style commands, one per line in the subject or body:
  ``set all|posts|digest|none``, ``subscribe [MODE]``, ``unsubscribe``, ``help``. ``set``
  takes effect at once for the From address, and the answer goes to that address, so a
  forged ``set`` is seen by the real subscriber. Quoted lines and the signature are skipped;
  processing stops after three lines that are not commands.

Each handler returns ``(outcome, detail)`` for the message's record; answers are notices.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import commands, subscriptions, tokens
from .config import MODES
from .fanout import UNSUBSCRIBE
from .threader import SUBJECT_PREFIX

if TYPE_CHECKING:
    from .app import App
    from .rules import Context

SIGNED_RE = re.compile(r"\b[0-9a-z]{21,33}\b")
MAX_LINES = 20


def _reply(ctx: Context, template: str, **extra: object) -> None:
    ctx.app.command_reply(ctx, template, **subscriptions.values(ctx.app, ctx.lst, **extra))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-zæøå]+", text.lower())


def subscribe(ctx: Context, mode: str | None = None) -> tuple[str, str]:
    address = ctx.parsed.from_address
    if mode is None:
        mode = next((w for w in _words(ctx.parsed.subject) if w in MODES), None)
    outcome, sub = subscriptions.request_subscription(ctx.app, ctx.session, ctx.lst, address,
                                                      ctx.parsed.from_name, mode)
    if outcome == "already":
        _reply(ctx, "subscribe_already", sub=sub)
    return "command", f"subscribe {address}: {outcome}"


def _signed_unsubscribe(ctx: Context) -> subscriptions.Subscription | None:
    text = f"{ctx.parsed.subject}\n{ctx.parsed.text[:2000]}".lower()
    for candidate in SIGNED_RE.findall(text)[:10]:
        sub = subscriptions.from_signed(ctx.app, ctx.session, ctx.lst.name, candidate,
                                        UNSUBSCRIBE)
        if sub is not None:
            return sub
    return None


def unsubscribe(ctx: Context) -> tuple[str, str]:
    app, lst = ctx.app, ctx.lst
    sub = _signed_unsubscribe(ctx)
    if sub is not None:
        if subscriptions.unsubscribe(app, ctx.session, sub):
            subscriptions.notify(app, ctx.session, lst, sub.address, "unsubscribed",
                                 f"msg:{ctx.message.id}", sub=sub)
        return "command", f"unsubscribe {sub.address} by its signed token"
    address = ctx.parsed.from_address
    sub = subscriptions.find(ctx.session, lst.name, address)
    if sub is None or sub.state == "unsubscribed":
        _reply(ctx, "not_subscribed", address=address)
        return "command", f"unsubscribe {address}: not subscribed"
    outcome = subscriptions.send_confirmation(app, ctx.session, lst, sub, "unsubscribe",
                                              "unsubscribe_confirm")
    return "command", f"unsubscribe {address}: confirmation {outcome}"


def help_command(ctx: Context) -> tuple[str, str]:
    sub = subscriptions.find(ctx.session, ctx.lst.name, ctx.parsed.from_address)
    _reply(ctx, "help", sub=sub, address=ctx.parsed.from_address)
    return "command", "help sent"


def command_lines(ctx: Context) -> tuple[str, list[str]]:
    """(the subject without Re:, the body lines that may hold commands)."""
    subject = SUBJECT_PREFIX.sub("", ctx.parsed.subject or "").strip()
    lines: list[str] = []
    for line in (ctx.parsed.new_text or ctx.parsed.text).splitlines():
        if line.rstrip() == "--":
            break
        line = line.strip()
        if line and not line.startswith(">"):
            lines.append(line)
        if len(lines) >= MAX_LINES:
            break
    return subject, lines


def run_line(ctx: Context, line: str) -> tuple[str, str, str] | None:
    """Carry out one command line: (command, outcome, argument), or None if not a command."""
    words = line.lower().split()
    if not words:
        return None
    verb, args = words[0], words[1:]
    address = ctx.parsed.from_address
    if verb == "set" and len(args) == 2 and args[0] == "format":
        sub = subscriptions.find(ctx.session, ctx.lst.name, address)
        if args[1] not in ("text", "mime"):
            return "set", "bad-mode", " ".join(args)
        if sub is None or sub.state not in ("active", "disabled"):
            return "set", "not-subscribed", " ".join(args)
        sub.digest_format = args[1]
        return "set", "mode-set", " ".join(args)
    if verb in ("set", "mode"):
        mode = args[-1] if args else ""
        if mode not in MODES:
            return "set", "bad-mode", mode
        sub = subscriptions.find(ctx.session, ctx.lst.name, address)
        if sub is None or sub.state not in ("active", "disabled"):
            return "set", "not-subscribed", mode
        subscriptions.set_mode(ctx.app, sub, mode)
        return "set", "mode-set", mode
    if verb in ("subscribe", "join"):
        mode = next((a for a in args if a in MODES), None)
        outcome, _ = subscriptions.request_subscription(
            ctx.app, ctx.session, ctx.lst, address, ctx.parsed.from_name, mode)
        return "subscribe", outcome, mode or ctx.lst.default_mode
    if verb in ("unsubscribe", "leave"):
        sub = subscriptions.find(ctx.session, ctx.lst.name, address)
        if sub is None or sub.state == "unsubscribed":
            return "unsubscribe", "not-subscribed", ""
        return "unsubscribe", subscriptions.send_confirmation(
            ctx.app, ctx.session, ctx.lst, sub, "unsubscribe", "unsubscribe_confirm"), ""
    if verb == "help":
        return "help", "help", ""
    return None


def request(ctx: Context) -> tuple[str, str]:
    subject, lines = command_lines(ctx)
    results: list[tuple[str, str, str]] = []
    unknown = 0
    for i, line in enumerate([subject, *lines]):
        result = run_line(ctx, line)
        if result is not None:
            results.append(result)
        elif i > 0:  # a subject that is no command is just a subject
            results.append((line[:80], "unknown", ""))
            unknown += 1
            if unknown >= 3:
                break
    sub = subscriptions.find(ctx.session, ctx.lst.name, ctx.parsed.from_address)
    _reply(ctx, "request_results", results=results, sub=sub,
           address=ctx.parsed.from_address)
    summary = ", ".join(f"{c} {a}: {o}".replace("  ", " ") for c, o, a in results)
    return "command", f"request: {summary or 'no commands'}"


def confirm_subscription(ctx: Context, row: tokens.Token) -> tuple[str, str]:
    outcome, sub = subscriptions.confirm(ctx.app, ctx.session, ctx.lst, row)
    return "confirmation", f"{row.kind} {row.address} confirmed: {outcome}"


def from_someone(handler: commands.Handler) -> commands.Handler:
    """Commands act for the From address: without a usable one there is no one to act for."""
    def run(ctx: Context) -> tuple[str, str]:
        if not subscriptions.valid_address(ctx.parsed.from_address):
            return "rejected", "command without a usable From address"
        return handler(ctx)
    return run


def install(app: App) -> None:
    commands.HANDLERS["subscribe"] = from_someone(subscribe)
    commands.HANDLERS["unsubscribe"] = from_someone(unsubscribe)
    commands.HANDLERS["help"] = from_someone(help_command)
    commands.HANDLERS["request"] = from_someone(request)
    commands.CONFIRM_KINDS["subscribe"] = confirm_subscription
    commands.CONFIRM_KINDS["unsubscribe"] = confirm_subscription
