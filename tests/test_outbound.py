"""Outbound list mail through a real relay (an aiosmtpd sink): who gets what, the headers
bulk senders need, threading of replies, retries, refusals and DKIM."""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Callable

import dkim
import pytest
from sqlalchemy import select

from listserver import tokens
from listserver.app import App
from listserver.dkim import dns_txt_func, generate_keypair
from listserver.fanout import BOUNCES
from listserver.intake import Incoming, store_incoming
from listserver.models import Outbox, Post, Subscription
from listserver.process import process_id
from listserver.sender import Sender
from listserver.subscriptions import subscribe_now

from conftest import (POST_SECRET, Clock, RunningServer, Sink, make_mail, relay_config,
                      wait_for)

AUTHOR = "Ivar Johansen <ivar@example.no>"
SECRET_ADDRESS = f"blog+post-{POST_SECRET}@lists.example.org"
TITLE = "Sosialt entreprenørskap: Status i Oslo kommune"


def subscribe(app: App, address: str, mode: str = "all", name: str = "",
              list_name: str = "blog") -> int:
    lst = app.config.lists[list_name]
    return app.db.call(lambda s: subscribe_now(app, s, lst, address, name, mode)[1].id)


def publish(app: App, msg: EmailMessage, to: str = SECRET_ADDRESS, list_name: str = "blog") -> int:
    """Receive and process a message without a server (what ``listserver inject`` does)."""
    sender = email.utils.parseaddr(str(msg["From"]))[1]
    [pk] = app.db.call(store_incoming, [Incoming(list_name, msg.as_bytes(), sender, [to],
                                                 "smtp")], app.config.domain)
    process_id(app, pk)
    return pk


def new_post(app: App, subject: str = TITLE, body: str = "Status for arbeidet.") -> EmailMessage:
    msg = make_mail(subject, body, sender=AUTHOR)
    publish(app, msg)
    return msg


def deliver(app: App) -> int:
    return asyncio.run(Sender(app).deliver())


def reply_to(received: EmailMessage, body: str, sender: str) -> EmailMessage:
    """A reply as a mail client writes it: to Reply-To, threaded on Message-ID/References."""
    refs = (received.get("References", "") + " " + received["Message-ID"]).split()
    quoted = "\n".join("> " + line for line in
                       received.get_body(("plain",)).get_content().splitlines())
    when = email.utils.format_datetime(email.utils.localtime())
    msg = make_mail("Re: " + str(received["Subject"]).removeprefix("Re: "),
                    f"{body}\n\nDen {when} skrev {received['From']}:\n{quoted}\n",
                    sender=sender, to=str(received["Reply-To"]),
                    in_reply_to=received["Message-ID"], references=" ".join(refs))
    msg["User-Agent"] = "Mozilla Thunderbird"
    return msg


@pytest.fixture
def relay_app(database_url: str, tmp_path: Path, sink: Sink,
              make_app: Callable[..., App]) -> App:
    return make_app(relay_config(database_url, tmp_path, sink.port))


def test_post_reaches_all_and_posts_subscribers_once_with_the_headers(
        relay_app: App, sink: Sink) -> None:
    app = relay_app
    ids = {addr: subscribe(app, addr, mode, name) for addr, mode, name in [
        ("anne@example.net", "all", "Anne Ås"), ("per@example.net", "posts", ""),
        ("dag@example.net", "digest", ""), ("ingen@example.net", "none", "")]}
    msg = new_post(app)
    assert deliver(app) == 2
    assert deliver(app) == 0
    got = sink.messages()
    assert sorted(rcpt for _, rcpt, _ in got) == ["anne@example.net", "per@example.net"]
    post = app.db.call(lambda s: s.execute(select(Post)).scalar_one())
    unsubscribe_tokens = set()
    for envelope, rcpt, mail in got:
        sub_id = ids[rcpt]
        # VERP: the envelope sender names the subscription, signed.
        verp = re.fullmatch(r"blog\+bounces-([a-z0-9]+)@lists\.example\.org", envelope)
        assert verp and tokens.check_signed(app.secret, verp[1], BOUNCES, "blog", sub_id, rcpt)
        assert mail["To"].addresses[0].addr_spec == rcpt
        assert mail["From"].addresses[0].display_name == \
            "Ivar Johansen via Sosialt entreprenørskap"
        assert mail["From"].addresses[0].addr_spec == "blog@lists.example.org"
        assert mail["Reply-To"].addresses[0].addr_spec == \
            f"blog+reply-{post.thread_token}@lists.example.org"
        assert mail["Message-ID"] == msg["Message-ID"]
        assert mail["Subject"] == TITLE
        assert mail["List-Id"] == "Sosialt entreprenørskap <blog.lists.example.org>"
        assert mail["List-Post"] == "<mailto:blog@lists.example.org>"
        assert mail["List-Help"] == "<mailto:blog+help@lists.example.org>"
        assert mail["List-Archive"] == "<http://archive.test/blog/>"
        assert mail["Archived-At"] == f"<http://archive.test/blog/posts/{post.slug}.html>"
        assert mail["Precedence"] == "list"
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsub = re.fullmatch(r"<http://archive\.test/unsubscribe/([a-z0-9]+)>, "
                             r"<mailto:blog\+unsubscribe@lists\.example\.org\?subject="
                             r"unsubscribe%20\1>", re.sub(r"\s+", " ", mail["List-Unsubscribe"]))
        assert unsub, mail["List-Unsubscribe"]
        unsubscribe_tokens.add(unsub[1])
        assert "Auto-Submitted" not in mail
        assert mail["Date"].datetime.utcoffset().total_seconds() in (3600, 7200)  # Oslo
        assert mail.get_content_type() == "multipart/alternative"
        text, html = mail.iter_parts()
        assert text.get_content_type() == "text/plain"
        assert html.get_content_type() == "text/html"
        assert "Status for arbeidet." in text.get_content()
        assert f"Meld deg av: http://archive.test/unsubscribe/{unsub[1]}" in text.get_content()
        body = html.get_content()
        assert f'href="http://archive.test/unsubscribe/{unsub[1]}"' in body
        assert "<style" not in body and 'style="' in body   # CSS inlined
        assert "Legg til kommentar" in body                 # Norwegian list
        assert len(mail.as_bytes()) < 100_000
    assert len(unsubscribe_tokens) == 2                     # personal links


def test_comment_reaches_all_but_its_sender_and_replies_thread(
        relay_app: App, sink: Sink) -> None:
    app = relay_app
    for addr, mode in [("anne@example.net", "all"), ("bjorn@example.net", "all"),
                       ("per@example.net", "posts")]:
        subscribe(app, addr, mode)
    new_post(app)
    deliver(app)
    [announcement] = sink.to("bjorn@example.net")
    # Bjørn replies with his mail client: a comment under the post.
    first = reply_to(announcement, "Flott innlegg!", "Bjørn <bjorn@example.net>")
    publish(app, first, to=str(announcement["Reply-To"].addresses[0].addr_spec))
    deliver(app)
    assert [m["Message-ID"] for m in sink.to("bjorn@example.net")] == [
        announcement["Message-ID"]]                         # not to its sender
    assert len(sink.to("per@example.net")) == 1             # posts only
    [comment_mail] = [m for m in sink.to("anne@example.net") if m["Message-ID"] ==
                      first["Message-ID"]]
    assert comment_mail["In-Reply-To"] == announcement["Message-ID"]
    assert comment_mail["References"] == announcement["Message-ID"]
    assert comment_mail["Subject"] == f"Re: {TITLE}"
    assert comment_mail["From"].addresses[0].display_name == "Bjørn via Sosialt entreprenørskap"
    assert "#1 Bjørn" in comment_mail.get_body(("plain",)).get_content()
    # Anne answers the comment mail: a comment under the comment, sent to Bjørn.
    second = reply_to(comment_mail, "Enig!", "Anne <anne@example.net>")
    publish(app, second, to=str(comment_mail["Reply-To"].addresses[0].addr_spec))
    deliver(app)
    [to_bjorn] = [m for m in sink.to("bjorn@example.net") if m["Message-ID"] ==
                  second["Message-ID"]]
    assert to_bjorn["In-Reply-To"] == first["Message-ID"]
    assert to_bjorn["References"].split() == [announcement["Message-ID"], first["Message-ID"]]
    assert [m["Message-ID"] for m in sink.to("anne@example.net")].count(
        second["Message-ID"]) == 0
    comments = app.db.call(lambda s: [(c.number, c.message_id, c.parent_message_id) for c in
                                      s.execute(select(Post)).scalar_one().comments])
    assert comments == [(1, first["Message-ID"], None),
                        (2, second["Message-ID"], first["Message-ID"])]


def test_relay_down_for_a_while_then_every_mail_delivered_once(
        database_url: str, tmp_path: Path, make_app: Callable[..., App]) -> None:
    sink = Sink()                         # its port is chosen, nothing listens yet
    clock = Clock()
    app = make_app(relay_config(database_url, tmp_path, sink.port), clock=clock)
    addresses = [f"reader{i}@example.net" for i in range(6)]
    for addr in addresses:
        subscribe(app, addr)
    new_post(app)
    assert deliver(app) == 6              # all deferred: connection refused
    rows = app.db.call(lambda s: s.execute(select(Outbox.state, Outbox.attempts)).all())
    assert rows == [("queued", 1)] * 6
    assert deliver(app) == 0              # backing off
    clock.advance(minutes=2)
    assert deliver(app) == 6              # still down: deferred again, for longer
    clock.advance(minutes=1.5)
    assert deliver(app) == 0              # 2 minutes this time
    sink.start()
    try:
        clock.advance(minutes=1)
        assert deliver(app) == 6
        clock.advance(days=1)
        assert deliver(app) == 0
        assert Counter(rcpt for _, rcpt, _ in sink.messages()) == Counter(addresses)
    finally:
        sink.stop()
    assert app.db.call(lambda s: s.execute(select(Outbox.state, Outbox.attempts)).all()) == \
        [("sent", 3)] * 6


def test_a_sender_that_dies_after_claiming_is_resumed(relay_app: App, sink: Sink,
                                                      make_app: Callable[..., App]) -> None:
    clock = Clock()
    app = make_app(relay_app.config, clock=clock)
    subscribe(app, "anne@example.net")
    subscribe(app, "bjorn@example.net")
    new_post(app)
    assert len(Sender(app)._claim()) == 2   # claimed, then the process "dies"
    assert deliver(app) == 0                # leased to the dead sender
    clock.advance(minutes=11)
    assert deliver(app) == 2
    assert sorted(r for _, r, _ in sink.messages()) == ["anne@example.net",
                                                        "bjorn@example.net"]


def test_550_for_one_recipient_fails_that_delivery_only(relay_app: App, sink: Sink,
                                                        make_app: Callable[..., App]) -> None:
    clock = Clock()
    app = make_app(relay_app.config, clock=clock)
    for addr in ("anne@example.net", "gone@example.net", "slow@example.net",
                 "bjorn@example.net"):
        subscribe(app, addr)
    sink.refuse["gone@example.net"] = "550 5.1.1 <gone@example.net>: no such user"
    sink.refuse["slow@example.net"] = "451 4.3.0 try again later"
    new_post(app)
    assert deliver(app) == 4
    assert sorted(r for _, r, _ in sink.messages()) == ["anne@example.net",
                                                        "bjorn@example.net"]
    states = dict(app.db.call(lambda s: s.execute(select(Outbox.recipient, Outbox.state)).all()))
    assert states == {"anne@example.net": "sent", "bjorn@example.net": "sent",
                      "gone@example.net": "failed", "slow@example.net": "queued"}
    error = app.db.call(lambda s: s.execute(select(Outbox.last_error).where(
        Outbox.recipient == "gone@example.net")).scalar_one())
    assert "550" in error
    gone = app.db.call(lambda s: s.execute(select(Subscription).where(
        Subscription.address == "gone@example.net")).scalar_one())
    assert gone.bounce_score == 1.0          # a refusal for good counts as a bounce
    del sink.refuse["slow@example.net"]
    clock.advance(minutes=5)
    assert deliver(app) == 1                 # only the deferred one is tried again
    assert sorted(r for _, r, _ in sink.messages()) == [
        "anne@example.net", "bjorn@example.net", "slow@example.net"]


def test_given_up_after_max_retry_age_counts_as_a_bounce(
        database_url: str, tmp_path: Path, make_app: Callable[..., App]) -> None:
    clock = Clock()
    app = make_app(relay_config(database_url, tmp_path, Sink().port), clock=clock)
    subscribe(app, "anne@example.net")
    new_post(app)
    deliver(app)
    clock.advance(days=5, minutes=1)
    assert deliver(app) == 1
    row = app.db.call(lambda s: s.execute(select(Outbox)).scalar_one())
    assert row.state == "bounced" and "gave up" in row.last_error
    assert app.db.call(lambda s: s.execute(select(Subscription.bounce_score)).scalar_one()) == 1


def test_dkim_signature_verifies(database_url: str, tmp_path: Path, sink: Sink,
                                 make_app: Callable[..., App]) -> None:
    key, record = generate_keypair(1024)
    (tmp_path / "dkim.pem").write_bytes(key)
    app = make_app(relay_config(database_url, tmp_path, sink.port,
                                outbound={"dkim_key_file": "dkim.pem", "dkim_selector": "ls"}))
    subscribe(app, "anne@example.net")
    subscribe(app, "per@example.net", "posts")
    new_post(app)
    assert deliver(app) == 2
    dns = dns_txt_func({"ls._domainkey.lists.example.org": record})
    for _, _, raw in sink.received:
        assert raw.startswith(b"DKIM-Signature:")
        assert dkim.verify(raw, dnsfunc=dns)
        signed = re.search(rb"h=([^;]+);", re.sub(rb"\s+", b"", raw.split(b"\r\n\r\n")[0]))
        assert signed is not None
        names = signed[1].decode().lower().split(":")
        for header in ("from", "subject", "message-id", "list-unsubscribe",
                       "list-unsubscribe-post"):
            assert header in names
        assert b"d=lists.example.org" in raw.split(b"\r\n\r\n")[0]
        assert not dkim.verify(raw.replace(b"Status for arbeidet.", b"Status for arbeidet!"),
                               dnsfunc=dns)


def test_long_post_is_cut_below_gmail_clipping_size(relay_app: App, sink: Sink) -> None:
    app = relay_app
    subscribe(app, "anne@example.net")
    paragraphs = "\n\n".join(f"Avsnitt {i}: " + "entreprenørskap " * 40 for i in range(400))
    new_post(app, body=paragraphs)
    deliver(app)
    [(_, _, raw)] = sink.received
    assert len(raw) < 100_000
    [mail] = sink.to("anne@example.net")
    text, html = mail.iter_parts()
    assert "Les resten i arkivet" in text.get_content()
    assert "Les resten i arkivet" in html.get_content()
    assert html.get_content().rstrip().endswith("</html>")


def test_english_list_mail(database_url: str, tmp_path: Path, sink: Sink,
                           make_app: Callable[..., App]) -> None:
    app = make_app(relay_config(database_url, tmp_path, sink.port,
                                blog={"language": "en", "timezone": "America/New_York",
                                      "title": "Social enterprise"}))
    subscribe(app, "anne@example.net")
    msg = make_mail("Status", "Hello.", sender=AUTHOR)
    msg.replace_header("Date", "Fri, 09 Mar 2018 09:02:00 +0100")
    publish(app, msg)
    deliver(app)
    [mail] = sink.to("anne@example.net")
    text, html = mail.iter_parts()
    assert "Unsubscribe: http://archive.test/unsubscribe/" in text.get_content()
    assert "9 March 2018 at 03:02" in text.get_content()    # the list's time zone
    assert "Add comment" in html.get_content()
    assert mail["Date"] == "Fri, 09 Mar 2018 03:02:00 -0500"


def test_fan_out_renders_each_post_once(relay_app: App, sink: Sink,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from listserver import fanout
    app = relay_app
    composed: list[Any] = []

    def counting(*args: Any) -> Any:
        composed.append(args)
        return real(*args)
    real = fanout.compose
    monkeypatch.setattr(fanout, "compose", counting)
    lst = app.config.lists["blog"]

    def many(session: Any) -> None:
        for i in range(300):
            subscribe_now(app, session, lst, f"reader{i:03}@example.net", "", "all")
    app.db.call(many)
    new_post(app)
    assert deliver(app) == 300
    assert len(composed) == 1
    got = Counter(rcpt for _, rcpt, _ in sink.messages())
    assert len(got) == 300 and set(got.values()) == {1}


def test_done_when(database_url: str, tmp_path: Path, sink: Sink,
                   make_app: Callable[..., App]) -> None:
    """A post to three subscribers in different modes, through a running server and a relay;
    a mail client's reply becomes a threaded comment that reaches the ``all`` subscriber;
    one-click unsubscribe works."""
    import urllib.request
    app = make_app(relay_config(database_url, tmp_path, sink.port))
    subscribe(app, "alle@example.net", "all", "Alle")
    subscribe(app, "innlegg@example.net", "posts", "Innlegg")
    subscribe(app, "sammendrag@example.net", "digest", "Sammendrag")
    with RunningServer(app) as server:
        post = make_mail(TITLE, "Status for arbeidet.", sender=AUTHOR)
        server.send(post, to=SECRET_ADDRESS)
        wait_for(lambda: len(sink.received) == 2, what="the announcements")
        [to_posts] = sink.to("innlegg@example.net")
        assert len(sink.to("alle@example.net")) == 1 and not sink.to("sammendrag@example.net")
        answer = reply_to(to_posts, "Et spørsmål.", "Innlegg <innlegg@example.net>")
        server.send(answer, to=str(to_posts["Reply-To"].addresses[0].addr_spec),
                    mail_from="innlegg@example.net")
        wait_for(lambda: len(sink.received) == 3, what="the comment")
        server.idle()
        [comment] = server.export()["posts"][0]["comments"]
        assert (comment["message_id"], comment["parent"]) == (answer["Message-ID"], None)
        [_, comment_mail] = sink.to("alle@example.net")
        assert comment_mail["In-Reply-To"] == post["Message-ID"]
        link = re.search(r"<(http://[^>]+)>", str(comment_mail["List-Unsubscribe"]))[1]
        path = link.replace("http://archive.test", f"http://127.0.0.1:{server.http_port}")
        request = urllib.request.Request(path, data=b"List-Unsubscribe=One-Click",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        state = app.db.call(lambda s: s.execute(select(Subscription.state).where(
            Subscription.address == "alle@example.net")).scalar_one())
        assert state == "unsubscribed"
        server.send(make_mail("Neste innlegg", "Mer.", sender=AUTHOR), to=SECRET_ADDRESS)
        wait_for(lambda: len(sink.received) == 4, what="the second announcement")
        server.idle()
    assert len(sink.to("alle@example.net")) == 2
    assert len(sink.to("innlegg@example.net")) == 2


def test_relay_restart_between_batches_costs_no_retry(relay_app: App, sink: Sink) -> None:
    """Pooled connections that the relay has dropped are replaced at once, not deferred."""
    app = relay_app
    subscribe(app, "anne@example.net")
    subscribe(app, "bjorn@example.net")

    async def two_posts() -> tuple[int, int]:
        sender = Sender(app)
        try:
            new_post(app, "Første")
            first = await sender.drain_once()
            sink.stop()                        # the relay restarts: its connections drop
            sink.start()
            new_post(app, "Andre")
            return first, await sender.drain_once()
        finally:
            await sender.transport.close()
    assert asyncio.run(two_posts()) == (2, 2)
    states = app.db.call(lambda s: s.execute(select(Outbox.state, Outbox.attempts)).all())
    assert states == [("sent", 1)] * 4
    assert Counter(rcpt for _, rcpt, _ in sink.messages()) == {
        "anne@example.net": 2, "bjorn@example.net": 2}
