"""Fan-out: a published post or comment becomes one outbox row per subscriber, and each row
becomes that subscriber's mail at send time.

On publish (inside the publishing transaction) one ``INSERT … SELECT`` from
``subscriptions`` queues the rows, without content: kind ``post``/``comment``, ref
``post:ID``/``comment:ID``, the recipient and the subscription id. Nothing is loaded into
Python, so enqueueing is as fast as the database and memory does not grow with the list.

A post goes to every active subscriber in mode ``all`` or ``posts``; a comment to every
active ``all`` subscriber except the comment's sender. Messages imported from an old
archive are never sent.

At send time the renderer composes the post or comment once (``listmail.compose``, kept
in a small LRU per ref) and personalises the bytes for each row: To, the one-click
unsubscribe link (a signed token, no row per mail) and the VERP envelope sender
``NAME+bounces-TOKEN@`` that maps a bounce back to the subscription.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from sqlalchemy import String, and_, bindparam, literal, select
from sqlalchemy.sql.expression import Executable
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import tokens
from .addresses import list_address
from .listmail import ListMail, compose
from .models import Comment, Message, Outbox, Post, Subscription
from .sender import Pending, Rendered
from .urls import unsubscribe_url

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.outbound")

UNSUBSCRIBE = "unsubscribe"   # purposes of the signed tokens
BOUNCES = "bounces"


def _imported(session: Session, message_pk: int | None) -> bool:
    if message_pk is None:
        return False
    # get(): the message being published is in the session already (no SELECT)
    message = session.get(Message, message_pk)
    return message is not None and message.source == "import"


_FANOUT_COLUMNS = ["list_name", "kind", "ref", "recipient", "envelope_from", "state",
                   "attempts", "next_attempt_at", "created_at", "subscription_id"]
_fanout_statements: dict[tuple[str, bool], Executable] = {}


def _fanout_statement(dialect: str, exclude: bool) -> Executable:
    """INSERT INTO outbox ... SELECT the matching subscribers, built once per shape."""
    key = (dialect, exclude)
    stmt = _fanout_statements.get(key)
    if stmt is None:
        where = [Subscription.list_name == bindparam("f_list"),
                 Subscription.state == "active",
                 Subscription.mode.in_(bindparam("f_modes", expanding=True))]
        if exclude:
            where.append(Subscription.address != bindparam("f_exclude"))
        now_type = Outbox.next_attempt_at.type
        rows = select(
            bindparam("f_list", type_=String), bindparam("f_kind", type_=String),
            bindparam("f_ref", type_=String), Subscription.address, literal(""),
            literal("queued"), literal(0), bindparam("f_now", type_=now_type),
            bindparam("f_now", type_=now_type), Subscription.id,
        ).where(and_(*where))
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(Outbox.__table__).from_select(  # the table: no ORM bulk semantics
            _FANOUT_COLUMNS, rows).on_conflict_do_nothing()
        _fanout_statements[key] = stmt
    return stmt


def enqueue_fanout(app: App, session: Session, list_name: str, kind: str, ref: str,
                   modes: tuple[str, ...], exclude: str = "") -> int:
    """Queue one content-less row per matching active subscriber; return how many."""
    stmt = _fanout_statement(session.get_bind().dialect.name, bool(exclude))
    params = {"f_list": list_name, "f_kind": kind, "f_ref": ref, "f_modes": list(modes),
              "f_now": app.now(), "f_exclude": exclude.lower()}
    count = session.execute(stmt, params).rowcount  # type: ignore[attr-defined]
    log.info("%s queued for %d subscriber(s) of %s", ref, count, list_name)
    return int(count)


class Fanout:
    """The publish hooks and the renderers of one ``App``, with its cache of composed mail."""

    def __init__(self, app: App, cache_size: int = 16) -> None:
        self.app = app
        self.cache: OrderedDict[str, ListMail | None] = OrderedDict()
        self.cache_size = cache_size
        self._link_cache: dict[str, tuple[str, str, str]] = {}

    def post_published(self, session: Session, post: Post) -> None:
        if _imported(session, post.message_pk):
            return
        if post.announce_after is not None:  # announced later with the night's posts
            return
        enqueue_fanout(self.app, session, post.list_name, "post", f"post:{post.id}",
                       ("all", "posts"))

    def comment_published(self, session: Session, comment: Comment) -> None:
        if _imported(session, comment.message_pk):
            return
        enqueue_fanout(self.app, session, comment.list_name, "comment",
                       f"comment:{comment.id}", ("all",), exclude=comment.author_address)

    def _compose(self, session: Session, list_name: str, ref: str) -> ListMail | None:
        kind, _, ident = ref.partition(":")
        lst = self.app.config.lists.get(list_name)
        if lst is None or not ident.isdigit():
            return None
        if kind == "post":
            post = session.get(Post, int(ident))
            return compose(self.app, session, lst, post) if post is not None else None
        comment = session.get(Comment, int(ident))
        if comment is None:
            return None
        return compose(self.app, session, lst, comment.post, comment)

    def mail_for(self, session: Session, list_name: str, ref: str) -> ListMail | None:
        key = f"{list_name}/{ref}"
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        mail = self._compose(session, list_name, ref)
        self.cache[key] = mail
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return mail

    def _links(self, list_name: str) -> tuple[str, str, str]:
        """(VERP address with a {} for the token, mailto prefix, unsubscribe URL prefix)."""
        links = self._link_cache.get(list_name)
        if links is None:
            config = self.app.config
            links = (list_address(config, list_name, "bounces", "{}"),
                     f"mailto:{list_address(config, list_name, 'unsubscribe')}"
                     "?subject=unsubscribe%20", unsubscribe_url(config, ""))
            self._link_cache[list_name] = links
        return links

    def render(self, session: Session, row: Pending) -> Rendered | None:
        """The renderer for rows of kind ``post`` and ``comment``."""
        if row.subscription_id is None:
            return None
        mail = self.mail_for(session, row.list_name, row.ref)
        if mail is None:
            return None
        secret, name, sub = self.app.secret, row.list_name, row.subscription_id
        unsub = tokens.signed(secret, UNSUBSCRIBE, name, sub, row.recipient)
        verp = tokens.signed(secret, BOUNCES, name, sub, row.recipient)
        envelope, mailto, url = self._links(name)
        content = mail.personalise(row.recipient, row.subscriber_name, url + unsub,
                                   mailto + unsub)
        return Rendered(content, envelope.format(verp))


def install(app: App) -> None:
    fanout = Fanout(app)
    app.hooks.post_published.append(fanout.post_published)
    app.hooks.comment_published.append(fanout.comment_published)
    app.renderers["post"] = fanout.render
    app.renderers["comment"] = fanout.render
