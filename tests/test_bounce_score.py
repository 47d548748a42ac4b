"""Bounces raise a subscription's score (real bounces from flufl.bounce's samples, VERP),
disable delivery past the threshold, and a confirmation enables it again."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select

from listserver.app import App
from listserver.config import parse_config
from listserver.intake import Incoming, store_incoming
from listserver.models import Comment, Message, Outbox, Post, Subscription
from listserver.process import process_id
from listserver.sender import Sender
from listserver.subscriptions import subscribe_now

from conftest import DATA, POST_SECRET, Clock, Sink, config_dict, make_mail, relay_config

BOUNCES = DATA / "bounces"


def receive(app: App, raw: bytes, to: str, envelope_from: str = "") -> Message:
    [pk] = app.db.call(store_incoming, [Incoming("blog", raw, envelope_from, [to], "smtp")],
                       app.config.domain)
    process_id(app, pk)
    return app.db.call(lambda s: s.get(Message, pk))


def bounce(app: App, sample: str, to: str = "blog+bounces@lists.example.org") -> Message:
    return receive(app, (BOUNCES / sample).read_bytes(), to)


def sub(app: App, address: str) -> Subscription:
    return app.db.call(lambda s: s.execute(select(Subscription).where(
        Subscription.address == address)).scalar_one())


def subscribe(app: App, *addresses: str) -> None:
    lst = app.config.lists["blog"]
    for address in addresses:
        app.db.call(lambda s: subscribe_now(app, s, lst, address))


def post(app: App, subject: str = "Innlegg") -> None:
    msg = make_mail(subject, "Tekst.", sender="Ivar <ivar@example.no>")
    receive(app, msg.as_bytes(), f"blog+post-{POST_SECRET}@lists.example.org",
            "ivar@example.no")


def test_real_bounces_raise_the_score_and_disable_delivery(
        tmp_path: Path, database_url: str, make_app: Callable[..., App]) -> None:
    clock = Clock()
    config = parse_config(config_dict(database_url, blog={"bounce_threshold": 3}),
                          root=tmp_path)
    app = make_app(config, clock=clock)
    subscribe(app, "userx@example.com", "userx@example.cz", "anne@example.net")
    first = bounce(app, "dsn_01.txt")
    assert (first.state, first.outcome) == ("done", "bounce")
    assert "userx@example.com score 1" in first.reason
    assert "already counted today" in bounce(app, "microsoft_01.txt").reason
    clock.advance(days=1)
    assert "userx@example.com score 2" in bounce(app, "hotpop_01.txt").reason
    clock.advance(days=1)
    assert "score 3, delivery disabled" in bounce(app, "yahoo_01.txt").reason
    assert "userx@example.cz score 0.5" in bounce(app, "dsn_05.txt").reason  # delayed
    assert "nothing counted" in bounce(app, "groupwise_03.txt").reason       # a person
    assert (sub(app, "userx@example.com").state, sub(app, "userx@example.com").bounce_score) \
        == ("disabled", 3.0)
    assert (sub(app, "userx@example.cz").state, sub(app, "userx@example.cz").bounce_score) \
        == ("active", 0.5)
    # Bounces are never published.
    assert app.db.call(lambda s: s.execute(select(func.count()).select_from(Comment))
                       .scalar_one()) == 0
    # A disabled subscription gets no list mail...
    post(app)
    recipients = app.db.call(lambda s: s.execute(select(Outbox.recipient).where(
        Outbox.kind == "post")).scalars().all())
    assert sorted(recipients) == ["anne@example.net", "userx@example.cz"]
    # ...but a notice it can answer to get it back.
    notice_raw = app.db.call(lambda s: s.execute(select(Outbox.content).where(
        Outbox.kind == "bounce-disabled")).scalar_one())
    notice = email.message_from_bytes(notice_raw, policy=email.policy.default)
    assert notice["To"] == "userx@example.com"
    assert notice["Subject"] == "Leveringen av Sosialt entreprenørskap til deg er stanset"
    reply = make_mail("Re: " + notice["Subject"], "Virker igjen.",
                      sender="userx@example.com", to=notice["Reply-To"],
                      in_reply_to=notice["Message-ID"])
    receive(app, reply.as_bytes(), notice["Reply-To"], "userx@example.com")
    again = sub(app, "userx@example.com")
    assert (again.state, again.bounce_score, again.last_bounce_at) == ("active", 0.0, None)


def test_verp_maps_a_bounce_to_its_subscriber(tmp_path: Path, database_url: str, sink: Sink,
                                              make_app: Callable[..., App]) -> None:
    app = make_app(relay_config(database_url, tmp_path, sink.port))
    subscribe(app, "anne@example.net", "bjorn@example.net")
    post(app)
    asyncio.run(Sender(app).deliver())
    verp = {rcpt: envelope for envelope, rcpt, _ in sink.messages()}
    # Anne's mail was forwarded; the far end reports an address we never sent to.
    dsn = (BOUNCES / "dsn_01.txt").read_bytes().replace(b"userx@example.com",
                                                        b"anne.forward@elsewhere.example")
    message = receive(app, dsn, verp["anne@example.net"])
    assert "anne@example.net score 1" in message.reason
    assert sub(app, "anne@example.net").bounce_score == 1.0
    assert sub(app, "bjorn@example.net").bounce_score == 0.0
    # A VERP address with a forged token counts for no one.
    forged = verp["bjorn@example.net"].replace("bounces-", "bounces-1")
    other = dsn.replace(b"anne.forward", b"bjorn.forward")
    assert "nothing counted" in receive(app, other, forged).reason
    assert sub(app, "bjorn@example.net").bounce_score == 0.0


def test_score_starts_again_after_quiet_days(tmp_path: Path, database_url: str,
                                             make_app: Callable[..., App]) -> None:
    clock = Clock()
    app = make_app(parse_config(config_dict(database_url), root=tmp_path), clock=clock)
    subscribe(app, "userx@example.com")
    bounce(app, "dsn_01.txt")
    clock.advance(days=2)
    bounce(app, "hotpop_01.txt")
    assert sub(app, "userx@example.com").bounce_score == 2.0
    clock.advance(days=8)
    bounce(app, "yahoo_01.txt")
    assert sub(app, "userx@example.com").bounce_score == 1.0
    assert app.db.call(lambda s: s.execute(select(func.count()).select_from(Post))
                       .scalar_one()) == 0
