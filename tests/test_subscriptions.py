"""Subscribing and leaving: by email (double opt-in), by the web form, by one-click
unsubscribe, by the CLI, and changing the delivery mode by email."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from listserver.app import App
from listserver.cli import main
from listserver.config import Config
from listserver.models import Message, Subscription
from listserver.subscriptions import subscribe_now

from conftest import POST_SECRET, Clock, RunningServer, make_mail, outbox_mail, wait_for

KARI = "Kari Nordmann <kari@example.net>"


def subscription(app: App, address: str) -> Subscription | None:
    return app.db.call(lambda s: s.execute(select(Subscription).where(
        Subscription.address == address)).scalar_one_or_none())


def mails_to(app: App, address: str) -> list[EmailMessage]:
    return [m for m in outbox_mail(app) if m["To"] == address]


def command(server: RunningServer, to: str, subject: str = "", body: str = "",
            sender: str = KARI) -> EmailMessage:
    msg = make_mail(subject, body, sender=sender, to=to)
    server.send(msg, to=to, mail_from=sender.split("<")[-1].rstrip(">"))
    server.idle()
    return msg


def answer(server: RunningServer, notice: EmailMessage, sender: str = KARI) -> None:
    """Reply to a notice as a mail client would: to its Reply-To."""
    reply_to = str(notice["Reply-To"])
    msg = make_mail("Re: " + str(notice["Subject"]), "Ja.\n\n> " + notice.get_content(),
                    sender=sender, to=reply_to, in_reply_to=notice["Message-ID"])
    server.send(msg, to=reply_to, mail_from=sender.split("<")[-1].rstrip(">"))
    server.idle()


def http(server: RunningServer, path: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    url = f"http://127.0.0.1:{server.http_port}{path}"
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_subscribe_by_email_confirmation_reply_active(server: RunningServer) -> None:
    app = server.app
    command(server, "blog+subscribe@lists.example.org", "Subscribe posts")
    assert subscription(app, "kari@example.net").state == "pending"
    [confirm] = mails_to(app, "kari@example.net")
    assert confirm["Subject"] == "Bekreft abonnementet ditt på Sosialt entreprenørskap"
    assert confirm["Auto-Submitted"] == "auto-generated"
    assert re.fullmatch(r"blog\+confirm-[a-z0-9]{24}@lists\.example\.org", confirm["Reply-To"])
    assert "http://archive.test/confirm/" in confirm.get_content()
    # A post now does not reach a subscription that is not confirmed.
    server.send(make_mail("Innlegg", "Tekst.", sender="Ivar <ivar@example.no>"),
                to=f"blog+post-{POST_SECRET}@lists.example.org")
    server.idle()
    assert len(mails_to(app, "kari@example.net")) == 1
    answer(server, confirm)
    sub = subscription(app, "kari@example.net")
    assert (sub.state, sub.mode, sub.name) == ("active", "posts", "Kari Nordmann")
    welcome = mails_to(app, "kari@example.net")[-1]
    assert welcome["Subject"] == "Velkommen til Sosialt entreprenørskap"
    assert "blog+request@lists.example.org" in welcome.get_content()
    # The token is single-use; subscribing again answers clearly.
    answer(server, confirm)
    assert "allerede brukt" in mails_to(app, "kari@example.net")[-1].get_content()
    command(server, "blog+subscribe@lists.example.org", "subscribe")
    already = mails_to(app, "kari@example.net")[-1]
    assert already["Subject"] == "Du abonnerer allerede på Sosialt entreprenørskap"


def test_expired_confirmation_is_answered(config: Config, make_app: Callable[..., App]) -> None:
    clock = Clock()
    with RunningServer(make_app(config, clock=clock)) as server:
        command(server, "blog+subscribe@lists.example.org", "subscribe")
        [confirm] = mails_to(server.app, "kari@example.net")
        clock.advance(days=3, minutes=1)
        answer(server, confirm)
        assert subscription(server.app, "kari@example.net").state == "pending"
        failed = mails_to(server.app, "kari@example.net")[-1]
        assert "utløpt" in failed.get_content()


def test_web_form_subscribe(server: RunningServer) -> None:
    app = server.app
    status, page, _ = http(server, "/subscribe/blog")
    assert status == 200 and 'name="address"' in page and "Abonner på" in page
    assert 'action="/subscribe/blog"' in page
    assert http(server, "/subscribe/nosuchlist")[0] == 404
    status, page, _ = http(server, "/subscribe", b"list=blog&address=not-an-address")
    assert status == 400
    form = urlencode({"list": "blog", "address": "Web@Example.NET", "name": "Nettleser",
                      "mode": "posts"}).encode()
    status, page, _ = http(server, "/subscribe", form)
    assert status == 200 and "Sjekk e-posten din" in page and "web@example.net" in page
    status, page, _ = http(server, "/subscribe/blog", form)  # twice: one mail, same answer
    assert status == 200 and "Sjekk e-posten din" in page
    server.idle()
    [confirm] = mails_to(app, "web@example.net")
    link = re.search(r"http://archive\.test(/confirm/[a-z0-9]+)", confirm.get_content())[1]
    status, page, _ = http(server, link)                    # a GET shows a button only
    assert status == 200 and '<form method="post"' in page
    assert subscription(app, "web@example.net").state == "pending"
    status, page, _ = http(server, link, b"")
    assert status == 200 and "Du abonnerer nå" in page
    sub = subscription(app, "web@example.net")
    assert (sub.state, sub.mode, sub.name) == ("active", "posts", "Nettleser")
    status, page, _ = http(server, link, b"")
    assert status == 410 and "allerede brukt" in page
    status, page, _ = http(server, "/confirm/aaaaaaaaaaaaaaaaaaaaaaaa")
    assert status == 404
    # Already subscribed: the page does not say so; a mail to the address does.
    status, page, _ = http(server, "/subscribe", form)
    server.idle()
    assert "Sjekk e-posten din" in page
    assert mails_to(app, "web@example.net")[-1]["Subject"].startswith("Du abonnerer allerede")


def unsubscribe_link(server: RunningServer, address: str) -> tuple[str, str]:
    """(https link, mailto) of List-Unsubscribe in a post as received by ``address``."""
    server.send(make_mail("Innlegg", "Tekst.", sender="Ivar <ivar@example.no>"),
                to=f"blog+post-{POST_SECRET}@lists.example.org")
    server.idle()
    [mail] = [m for m in mails_to(server.app, address) if m["List-Unsubscribe"]][-1:]
    link, mailto = re.findall(r"<([^>]+)>", str(mail["List-Unsubscribe"]))
    return link.replace("http://archive.test", ""), mailto


def test_one_click_post_unsubscribes_get_does_not(server: RunningServer) -> None:
    app = server.app
    lst = app.config.lists["blog"]
    for address in ("anne@example.net", "bjorn@example.net"):
        app.db.call(lambda s: subscribe_now(app, s, lst, address))
    path, _ = unsubscribe_link(server, "anne@example.net")
    for _ in range(2):
        status, page, _ = http(server, path)
        assert status == 200 and 'value="One-Click"' in page
    assert subscription(app, "anne@example.net").state == "active"
    status, _, _ = http(server, path, b"")                  # not a one-click POST
    assert status == 400
    assert subscription(app, "anne@example.net").state == "active"
    status, page, headers = http(server, path, b"List-Unsubscribe=One-Click",
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and "Du er meldt av" in page
    assert "Location" not in headers and "Set-Cookie" not in headers
    assert subscription(app, "anne@example.net").state == "unsubscribed"
    status, page, _ = http(server, path, b"List-Unsubscribe=One-Click")
    assert status == 200 and "abonnerer ikke" in page
    forged = path[:-1] + ("a" if path[-1] != "a" else "b")
    assert http(server, forged, b"List-Unsubscribe=One-Click")[0] == 404
    assert http(server, forged)[0] == 404
    # The multipart/form-data body some clients send works too.
    path, _ = unsubscribe_link(server, "bjorn@example.net")
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--XyZ--\r\n")
    status, _, _ = http(server, path, body, {"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 200 and subscription(app, "bjorn@example.net").state == "unsubscribed"


def test_unsubscribe_by_mail(server: RunningServer) -> None:
    app = server.app
    lst = app.config.lists["blog"]
    for address in ("anne@example.net", "kari@example.net"):
        app.db.call(lambda s: subscribe_now(app, s, lst, address))
    # The mailto of List-Unsubscribe carries a signed token: it works at once, from any From.
    _, mailto = unsubscribe_link(server, "anne@example.net")
    to, _, query = mailto.removeprefix("mailto:").partition("?subject=")
    command(server, to, query.replace("%20", " "), sender="Anne <anne.forward@example.org>")
    assert subscription(app, "anne@example.net").state == "unsubscribed"
    assert mails_to(app, "anne@example.net")[-1]["Subject"] == \
        "Du er meldt av Sosialt entreprenørskap"
    # Without a token the From address must confirm.
    command(server, "blog+unsubscribe@lists.example.org", "unsubscribe")
    assert subscription(app, "kari@example.net").state == "active"
    confirm = mails_to(app, "kari@example.net")[-1]
    assert confirm["Subject"] == "Bekreft at du vil melde deg av Sosialt entreprenørskap"
    answer(server, confirm)
    assert subscription(app, "kari@example.net").state == "unsubscribed"
    command(server, "blog+unsubscribe@lists.example.org", "unsubscribe",
            sender="Ola <ola@example.net>")
    assert mails_to(app, "ola@example.net")[-1]["Subject"] == \
        "ola@example.net abonnerer ikke på Sosialt entreprenørskap"


def test_set_mode_and_help_by_mail(server: RunningServer) -> None:
    app = server.app
    lst = app.config.lists["blog"]
    app.db.call(lambda s: subscribe_now(app, s, lst, "kari@example.net"))
    command(server, "blog+request@lists.example.org", "",
            "set posts\nset weekly\nhello there\n\n-- \nKari\nset none")
    assert subscription(app, "kari@example.net").mode == "posts"
    result = mails_to(app, "kari@example.net")[-1].get_content()
    assert "Utført: kari@example.net får nå bare innlegg." in result
    assert "Ukjent valg «weekly»" in result
    assert "> hello there\nIkke en kommando" in result
    command(server, "blog+request@lists.example.org", "set digest")  # in the subject
    assert subscription(app, "kari@example.net").mode == "digest"
    command(server, "blog+request@lists.example.org", "", "set all",
            sender="Ola <ola@example.net>")
    assert "ola@example.net abonnerer ikke" in mails_to(app, "ola@example.net")[-1].get_content()
    command(server, "blog+help@lists.example.org", "help")
    help_text = mails_to(app, "kari@example.net")[-1].get_content()
    assert "abonnerer og får et sammendrag" in help_text
    assert "blog+request@lists.example.org" in help_text


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[site]
domain = "lists.example.org"
base_url = "http://archive.test"
[database]
url = "{database_url}"
[outbound]
maildir = "outbox"
[[list]]
name = "blog"
title = "Blogg"
language = "en"
""", encoding="utf-8")
    return path


def test_cli_subscribe_unsubscribe_members(tmp_path: Path, database_url: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(write_config(tmp_path, database_url))

    def run(*args: str) -> tuple[int, str]:
        status = main(["--config", cfg, *args])
        out, err = capsys.readouterr()
        return status, out + err

    assert run("subscribe", "blog", "Kari@Example.net", "--name", "Kari", "--mode", "posts",
               "--no-confirm") == (0, "kari@example.net subscribed to blog (mode posts)\n")
    assert run("subscribe", "blog", "kari@example.net", "--no-confirm")[1] == \
        "kari@example.net is already subscribed to blog (mode posts)\n"
    status, out = run("subscribe", "blog", "ola@example.net")
    assert status == 0 and "confirmation mail queued for ola@example.net" in out
    assert run("subscribe", "blog", "not an address")[0] == 1
    status, out = run("members", "blog", "--json")
    assert status == 0
    members = json.loads(out.split("\n]")[0] + "\n]")
    assert [(m["address"], m["mode"], m["state"], m["name"]) for m in members] == [
        ("kari@example.net", "posts", "active", "Kari"),
        ("ola@example.net", "all", "pending", "")]
    assert run("unsubscribe", "blog", "kari@example.net")[1] == \
        "kari@example.net unsubscribed from blog\n"
    assert run("unsubscribe", "blog", "kari@example.net")[1] == \
        "kari@example.net is not subscribed to blog\n"
    status, out = run("members", "blog")
    assert out.splitlines() == ["ola@example.net  all  (pending)", "0 active of 1"]
    assert run("deliver")[1] == "1 mail(s) tried\n"          # ola's confirmation
    assert run("members", "nosuchlist")[0] == 1
    wait_for(lambda: (tmp_path / "outbox" / "new").exists(), what="the maildir")
    [confirmation] = list((tmp_path / "outbox" / "new").iterdir())
    assert b"Confirm your subscription to Blogg" in confirmation.read_bytes()


def test_command_without_a_usable_from_does_nothing(server: RunningServer) -> None:
    raw = (b"From: nobody\r\nTo: blog+subscribe@lists.example.org\r\nSubject: subscribe\r\n"
           b"Message-ID: <nofrom@example.net>\r\n\r\nsubscribe\r\n")
    server.send(raw, to="blog+subscribe@lists.example.org")
    server.idle()
    row = wait_for(lambda: server.app.db.call(lambda s: s.execute(select(Message).where(
        Message.message_id == "<nofrom@example.net>", Message.state == "done"))
        .scalar_one_or_none()), what="processing")
    assert row.outcome == "rejected"
    assert server.app.db.call(lambda s: s.execute(select(Subscription)).first()) is None
