"""Held-message notices to the owners are answered by mail: "approve" publishes (and the
post goes out to the subscribers), "reject" rejects."""

from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy import select

from listserver.models import Message
from listserver.subscriptions import subscribe_now

from conftest import RunningServer, make_mail, outbox_mail

OWNER = "Owner <owner@example.org>"


def held_notice(server: RunningServer, subject: str) -> tuple[EmailMessage, EmailMessage]:
    msg = make_mail(subject, "Et nytt tema fra en leser.", sender="Leser <leser@example.net>")
    server.send(msg)
    server.idle()
    [notice] = [m for m in outbox_mail(server.app)
                if m["To"] == "owner@example.org" and subject in m["Subject"]]
    assert notice["Auto-Submitted"] == "auto-generated"
    return msg, notice


def answer(server: RunningServer, notice: EmailMessage, decision: str) -> None:
    quoted = "\n".join("> " + line for line in notice.get_content().splitlines())
    reply = make_mail("Re: " + notice["Subject"],
                      f"{decision}\n\nDen 9. mars 2018 kl. 09:02 skrev listen:\n{quoted}\n",
                      sender=OWNER, to=notice["Reply-To"], in_reply_to=notice["Message-ID"])
    server.send(reply, to=notice["Reply-To"], mail_from="owner@example.org")
    server.idle()


def state(server: RunningServer, message_id: str) -> tuple[str, str | None]:
    row = server.app.db.call(lambda s: s.execute(select(Message).where(
        Message.message_id == message_id)).scalar_one())
    return row.state, row.outcome


def test_owner_approves_by_mail(server: RunningServer) -> None:
    app = server.app
    app.db.call(lambda s: subscribe_now(app, s, app.config.lists["blog"], "anne@example.net"))
    msg, notice = held_notice(server, "Et spørsmål om budsjettet")
    assert state(server, msg["Message-ID"]) == ("held", "held")
    answer(server, notice, "Approve, takk.")
    assert state(server, msg["Message-ID"]) == ("done", "post")
    assert [p["title"] for p in server.export()["posts"]] == ["Et spørsmål om budsjettet"]
    [announcement] = [m for m in outbox_mail(app) if m["To"] == "anne@example.net"]
    assert announcement["Message-ID"] == msg["Message-ID"]


def test_owner_rejects_by_mail(server: RunningServer) -> None:
    msg, notice = held_notice(server, "Kjøp billige klokker")
    answer(server, notice, "Avvis.")
    assert state(server, msg["Message-ID"]) == ("done", "rejected")
    assert server.export()["posts"] == []
