"""Processing a stored message: parse, decide with the rule chain, carry the action out.

``process_one`` is the single boundary that catches everything: a message whose processing
raises is parked as ``failed`` with its traceback (Mailman's shunt queue), and
``listserver retry`` queues it again. Nothing is ever dropped.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from . import commands, notices, outbox
from .addresses import ListAddress, list_address, parse_address
from .errors import DiscardMessage, HoldMessage, RejectMessage
from .models import Comment, Message, Post
from .parse import parse_message
from .publish import create_comment, create_post, scheduled_time
from .rules import Context, decide
from .threader import subject_hint

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.process")


def claim_next(session: Session, after_id: int = 0) -> Message | None:
    """The oldest queued message, locked for this worker (SKIP LOCKED on PostgreSQL)."""
    return session.execute(
        select(Message).where(Message.state == "queued", Message.id > after_id)
        .order_by(Message.id).limit(1).with_for_update(skip_locked=True)).scalar_one_or_none()


def process_next(app: App, after_id: int = 0) -> int | None:
    """Process the oldest queued message; return its id, or None when the queue is empty."""
    try:
        with app.db.transaction() as session:
            message = claim_next(session, after_id)
            if message is None:
                return None
            pk = message.id
            handle(app, session, message)
        return pk
    except Exception:
        error = traceback.format_exc()
        log.error("processing message %s failed, parked:\n%s", locals().get("pk"), error)
        if "pk" not in locals():
            raise
        park(app, pk, error)
        return pk


BATCH_SECONDS = 0.1       # a batch ends after this long,
MIN_BATCH_SECONDS = 0.01  # or after this long when an SMTP intake commit is waiting


def process_batch(app: App, limit: int = 50) -> int:
    """Process up to ``limit`` queued messages in one transaction, each in a savepoint.

    One commit covers the batch (it is what costs under load); a message that raises is
    rolled back to its savepoint and parked, and the others go on. The batch stops after
    ``BATCH_SECONDS``, or after ``MIN_BATCH_SECONDS`` when an SMTP session waits for the
    write lock (SQLite has one): a client waits for its 250 behind a few milliseconds of
    processing, while processing still commits (and fsyncs) many messages at once. If the
    batch as a whole cannot commit, it falls back to one message per transaction.
    """
    try:
        with app.db.transaction() as session:
            messages = session.execute(
                select(Message).where(Message.state == "queued").order_by(Message.id)
                .limit(limit).with_for_update(skip_locked=True)).scalars().all()
            start = time.monotonic()
            intake = app.db.intake_signal
            done = 0
            for message in messages:
                if done:
                    elapsed = time.monotonic() - start
                    if elapsed > BATCH_SECONDS or (
                            elapsed > MIN_BATCH_SECONDS and intake.waiting()):
                        break
                done += 1
                pk = message.id
                try:
                    with session.begin_nested():
                        handle(app, session, message)
                except Exception:
                    error = traceback.format_exc()
                    log.error("processing message %s failed, parked:\n%s", pk, error)
                    parked = session.get(Message, pk)
                    assert parked is not None
                    parked.state, parked.error = "failed", error
                    parked.attempts += 1
                    parked.processed_at = app.now()
            return done
    except Exception:
        log.exception("batch of up to %d messages failed; one at a time", limit)
        done = 0
        while done < limit and process_next(app) is not None:
            done += 1
        return done


def process_id(app: App, pk: int) -> None:
    """Process one given message now (``inject``, tests)."""
    try:
        with app.db.transaction() as session:
            message = session.get(Message, pk, with_for_update=True)
            if message is None or message.state != "queued":
                return
            handle(app, session, message)
    except Exception:
        error = traceback.format_exc()
        log.error("processing message %s failed, parked:\n%s", pk, error)
        park(app, pk, error)


def park(app: App, pk: int, error: str) -> None:
    with app.db.transaction() as session:
        message = session.get(Message, pk)
        if message is not None:
            message.state = "failed"
            message.error = error
            message.attempts += 1
            message.processed_at = app.now()


def handle(app: App, session: Session, message: Message,
           notes: dict[str, str] | None = None) -> None:
    lst = app.config.lists.get(message.list_name)
    if lst is None:
        raise RuntimeError(f"list {message.list_name!r} is no longer configured")
    parsed = parse_message(message.raw)
    addresses = [a for a in (parse_address(r, app.config) for r in message.recipients.split())
                 if a is not None] or [ListAddress(message.list_name)]
    ctx = Context(app=app, session=session, message=message, parsed=parsed, lst=lst,
                  addresses=addresses, approved=message.approved, notes=dict(notes or {}))
    rule, action, reason = decide(ctx)
    try:
        ACTIONS[action](ctx, reason)
    except HoldMessage as hold:
        _hold(ctx, hold.reason)
        return
    except DiscardMessage as discard:
        _finish(ctx, discard.kind, discard.reason)
        return
    except RejectMessage as reject:
        _finish(ctx, "rejected", reject.reason)
        return
    finally:
        # Set last, so that they go out in the same UPDATE as the outcome.
        message.from_address = parsed.from_address[:500]
        message.from_name = parsed.from_name[:500]
        message.subject = parsed.subject
        message.attempts += 1
    log.info("message %s (%s) for %s: %s by rule %s: %s", message.id, message.message_id,
             message.list_name, action, rule, reason)


def _finish(ctx: Context, outcome: str, reason: str) -> None:
    ctx.message.state = "done"
    ctx.message.outcome = outcome
    ctx.message.reason = reason
    ctx.message.waiting_for = None
    ctx.message.processed_at = ctx.app.now()


def _hold(ctx: Context, reason: str, waiting_for: str | None = None) -> None:
    ctx.message.state = "held"
    ctx.message.outcome = "held"
    ctx.message.reason = reason
    ctx.message.waiting_for = waiting_for
    ctx.message.processed_at = ctx.app.now()
    ctx.message.hint = subject_hint(ctx.session, ctx.message.list_name, ctx.parsed.subject)
    log.info("message %s held: %s%s", ctx.message.message_id, reason,
             f" (hint: {ctx.message.hint})" if ctx.message.hint else "")
    notices.notify_owners_of_hold(ctx)


ID_TAKEN = select(Post.id).where(
    Post.list_name == bindparam("list_name"), Post.message_id == bindparam("message_id")
).union_all(select(Comment.id).where(
    Comment.list_name == bindparam("list_name"), Comment.message_id == bindparam("message_id"))
).limit(1)


def _published_id(ctx: Context) -> str:
    """The Message-ID to publish under: a new one if the original is already taken."""
    params = {"list_name": ctx.message.list_name, "message_id": ctx.message_id}
    if ctx.session.execute(ID_TAKEN, params).first() is not None:
        return f"<{uuid.uuid4().hex}@{ctx.app.config.domain}>"
    return ctx.message_id


def act_post(ctx: Context, reason: str) -> None:
    schedule = scheduled_time(ctx.parsed.text, ctx.lst.tz) if ctx.message.source != "import" \
        else None
    if schedule is not None and schedule[0] > ctx.app.now():
        when, text = schedule
        ctx.parsed.text = text
        if ctx.parsed.html:
            ctx.parsed.html = re.sub(r"Publish:\s*\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}", "",
                                     ctx.parsed.html, count=1)
        post = create_post(ctx.session, ctx.app.hooks, ctx.message, ctx.parsed,
                           _published_id(ctx), state="scheduled", publish_at=when)
        notices.send(ctx.app, ctx.session, ctx.lst, "scheduled-ack", f"post:{post.id}",
                     ctx.parsed.from_address, "post_scheduled", title=post.title,
                     when=when.astimezone(ctx.lst.tz))
        _finish(ctx, "scheduled", f"{reason}; to be published {when.isoformat()}")
        return
    if schedule is not None:
        ctx.parsed.text = schedule[1]
    create_post(ctx.session, ctx.app.hooks, ctx.message, ctx.parsed, _published_id(ctx))
    _finish(ctx, "post", reason)


def act_comment(ctx: Context, reason: str) -> None:
    placement = ctx.placement
    assert placement.target is not None
    create_comment(ctx.session, ctx.app.hooks, ctx.message, ctx.parsed, _published_id(ctx),
                   placement.target, placement.wanted)
    _finish(ctx, "comment", reason)


def act_hold(ctx: Context, reason: str) -> None:
    waiting = ctx.placement.wanted if ctx.is_reply and ctx.placement.target is None else None
    _hold(ctx, reason, waiting)


def act_wait(ctx: Context, reason: str) -> None:
    """Held quietly until its parent is published: no notice (imports release the rest)."""
    ctx.message.state = "held"
    ctx.message.outcome = "held"
    ctx.message.reason = reason
    ctx.message.waiting_for = ctx.placement.wanted
    ctx.message.processed_at = ctx.app.now()


def act_confirm_post(ctx: Context, reason: str) -> None:
    token = ctx.app.issue_token(ctx.session, ctx.lst.name, "confirm-post",
                                address=ctx.parsed.from_address, ref=str(ctx.message.id))
    notices.confirm_post(ctx, token)
    _hold(ctx, reason)


def act_discard(ctx: Context, reason: str) -> None:
    rule_kind = "loop" if "loop" in reason else "auto-reply"
    _finish(ctx, rule_kind, reason)


def act_reject(ctx: Context, reason: str) -> None:
    _finish(ctx, "rejected", reason)


def act_bounce(ctx: Context, reason: str) -> None:
    report = ctx.app.bounce_handler(ctx)
    _finish(ctx, "bounce", f"{reason}; {report}")


def act_owner(ctx: Context, reason: str) -> None:
    lst = ctx.lst
    for owner in lst.owners:
        outbox.enqueue(ctx.session, lst.name, "owner-forward", f"msg:{ctx.message.id}", owner,
                       ctx.message.raw, list_address(ctx.app.config, lst.name, "bounces"),
                       when=ctx.app.now())
    _finish(ctx, "owner", f"forwarded to {len(lst.owners)} owner(s)")


def act_command(ctx: Context, reason: str) -> None:
    outcome, detail = commands.run(ctx)
    _finish(ctx, outcome, detail)


ACTIONS = {
    "post": act_post, "comment": act_comment, "hold": act_hold, "wait": act_wait,
    "confirm-post": act_confirm_post, "discard": act_discard, "reject": act_reject,
    "bounce": act_bounce, "owner": act_owner, "command": act_command,
}
