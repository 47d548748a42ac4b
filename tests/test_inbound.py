"""The inbound half over real SMTP: posts, threaded comments, holds, duplicates, refusals."""

from __future__ import annotations

import smtplib
import socket
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from listserver.dkim import dns_txt_func, generate_keypair, sign
from listserver.models import Message

from conftest import POST_SECRET, RunningServer, make_mail, outbox_mail, wait_for

SECRET_ADDRESS = f"blog+post-{POST_SECRET}@lists.example.org"
AUTHOR = "Ivar Johansen <ivar@example.no>"


def post(server: RunningServer, subject: str = "Sosialt entreprenørskap: Status i Oslo kommune",
         body: str = "Status for arbeidet med sosialt entreprenørskap.") -> EmailMessage:
    msg = make_mail(subject, body, sender=AUTHOR, to="blog@lists.example.org")
    server.send(msg, to=SECRET_ADDRESS)
    return msg


def reply(parent: EmailMessage, body: str, sender: str, *, references: bool = True,
          in_reply_to: bool = True) -> EmailMessage:
    refs = (parent.get("References", "") + " " + parent["Message-ID"]).strip()
    return make_mail("Re: " + parent["Subject"].removeprefix("Re: "), body, sender=sender,
                     in_reply_to=parent["Message-ID"] if in_reply_to else None,
                     references=refs if references else None)


def message_row(server: RunningServer, message_id: str) -> Message:
    return wait_for(lambda: server.app.db.call(lambda s: s.execute(select(Message).where(
        Message.message_id == message_id, Message.state != "queued")).scalars().first()),
        what=f"{message_id} processed")


def test_post_and_a_tree_of_replies(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Flott innlegg!", "Kirstine <kirstine@example.no>")
    server.send(c1)
    c2 = reply(c1, "Enig med Kirstine.", "Ola <ola@example.no>")
    server.send(c2)
    c3 = reply(p, "Et spørsmål til innlegget.", "Per <per@example.no>")
    server.send(c3)
    server.idle()
    data = server.export()
    assert data["list"] == "blog"
    [exported] = data["posts"]
    assert exported["message_id"] == p["Message-ID"]
    assert exported["title"] == "Sosialt entreprenørskap: Status i Oslo kommune"
    assert exported["author"] == {"name": "Ivar Johansen", "address": "ivar@example.no"}
    assert exported["url"].startswith("http://archive.test/blog/posts/")
    assert exported["date"].endswith(("+01:00", "+02:00"))  # Europe/Oslo
    tree = [(c["number"], c["message_id"], c["parent"], c["author"]["name"])
            for c in exported["comments"]]
    assert tree == [
        (1, c1["Message-ID"], None, "Kirstine"),
        (2, c2["Message-ID"], c1["Message-ID"], "Ola"),
        (3, c3["Message-ID"], None, "Per"),
    ]
    assert exported["comments"][0]["text"] == "Flott innlegg!"
    assert exported["comments"][1]["url"] == exported["url"] + "#c2"


def test_dkim_signed_post_from_author_publishes(app, make_app, config, tmp_path) -> None:
    key, record = generate_keypair(1024)
    dns = dns_txt_func({"sel._domainkey.example.no.": record})
    dkim_app = make_app(config, dns_txt=dns)
    with RunningServer(dkim_app) as server:
        msg = make_mail("Signert innlegg", "Dette er signert.", sender=AUTHOR)
        raw = msg.as_bytes().replace(b"\n", b"\r\n")
        signed = sign(raw, "sel", "example.no", key,
                      ["from", "to", "subject", "date", "message-id"]) + raw
        server.send(signed)
        assert message_row(server, msg["Message-ID"]).outcome == "post"
        # The same signature with a changed body proves nothing: held for confirmation.
        tampered = signed.replace(b"Dette er signert.", b"Dette er forfalsket.")
        tampered = tampered.replace(msg["Message-ID"].encode(), b"<tampered@example.no>")
        server.send(tampered)
        assert message_row(server, "<tampered@example.no>").state == "held"
        assert [p["title"] for p in server.export()["posts"]] == ["Signert innlegg"]


def test_spoofed_author_is_held_and_confirmation_publishes(server: RunningServer) -> None:
    spoof = make_mail("Falsk innlegg", "Noen andre skrev dette.", sender=AUTHOR)
    server.send(spoof, mail_from="mallory@evil.example")
    row = message_row(server, spoof["Message-ID"])
    assert row.state == "held" and "confirmation sent" in row.reason
    assert server.export()["posts"] == []
    server.idle()
    confirmations = [m for m in outbox_mail(server.app) if m["To"] == "ivar@example.no"]
    assert len(confirmations) == 1
    confirm = confirmations[0]
    assert confirm["Auto-Submitted"] == "auto-generated"
    reply_to = confirm["Reply-To"]
    assert reply_to.startswith("blog+confirm-") and reply_to.endswith("@lists.example.org")
    assert "Falsk innlegg" in confirm.get_content()
    # The real author answers the confirmation: the post is published.
    answer = make_mail("Re: " + confirm["Subject"], "Ja, det var meg.", sender=AUTHOR,
                       in_reply_to=confirm["Message-ID"], to=reply_to)
    server.send(answer, to=reply_to)
    wait_for(lambda: server.export()["posts"], what="confirmed post")
    assert server.export()["posts"][0]["title"] == "Falsk innlegg"
    # The token is single-use.
    again = make_mail("Re: again", "Igjen.", sender=AUTHOR)
    server.send(again, to=reply_to)
    assert "used" in message_row(server, again["Message-ID"]).reason


def test_reply_before_its_parent_is_reattached(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Første kommentar.", "A <a@example.net>")
    c2 = reply(c1, "Svar på første.", "B <b@example.net>")
    server.send(c2)           # arrives first: placed under the post by References
    server.idle()
    [c2_row] = server.export()["posts"][0]["comments"]
    assert (c2_row["number"], c2_row["parent"]) == (1, None)
    server.send(c1)
    server.idle()
    comments = {c["message_id"]: c for c in server.export()["posts"][0]["comments"]}
    assert comments[c2["Message-ID"]]["parent"] == c1["Message-ID"]
    assert comments[c2["Message-ID"]]["number"] == 1     # keeps its number
    assert comments[c1["Message-ID"]]["number"] == 2


def test_reply_with_only_unknown_in_reply_to_waits_and_is_released(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Første.", "A <a@example.net>")
    c2 = reply(c1, "Andre.", "B <b@example.net>", references=False)
    server.send(c2)
    row = message_row(server, c2["Message-ID"])
    assert row.state == "held" and row.waiting_for == c1["Message-ID"]
    server.send(c1)
    wait_for(lambda: len(server.export()["posts"][0]["comments"]) == 2, what="release")
    comments = server.export()["posts"][0]["comments"]
    assert [(c["message_id"], c["parent"]) for c in comments] == [
        (c1["Message-ID"], None), (c2["Message-ID"], c1["Message-ID"])]


def test_references_only(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Første.", "A <a@example.net>")
    server.send(c1)
    c2 = reply(c1, "Bare References.", "B <b@example.net>", in_reply_to=False)
    server.send(c2)
    server.idle()
    assert server.export()["posts"][0]["comments"][1]["parent"] == c1["Message-ID"]


def test_same_message_id_twice_is_stored_once(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Sendt to ganger.", "A <a@example.net>")
    server.send(c1)
    server.send(c1)
    # A second route adds trace headers: still the same message.
    server.send(b"Received: from relay2.example by mx\r\n" + c1.as_bytes())
    server.idle()
    count = server.app.db.call(lambda s: s.execute(select(func.count()).select_from(
        Message).where(Message.message_id == c1["Message-ID"])).scalar_one())
    assert count == 1
    assert len(server.export()["posts"][0]["comments"]) == 1


def test_message_without_message_id_gets_one(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Uten Message-ID.", "A <a@example.net>")
    del c1["Message-ID"]
    server.send(c1)
    server.idle()
    [comment] = server.export()["posts"][0]["comments"]
    assert comment["message_id"].startswith("<") and "@lists.example.org>" in \
        comment["message_id"]


def test_loop_and_auto_reply_are_never_comments(server: RunningServer) -> None:
    p = post(server)
    looped = reply(p, "Looping.", "A <a@example.net>")
    looped["List-Id"] = "Sosialt <blog.lists.example.org>"
    server.send(looped)
    ooo = reply(p, "I am away until Monday.", "B <b@example.net>")
    ooo["Auto-Submitted"] = "auto-replied"
    server.send(ooo)
    assert message_row(server, looped["Message-ID"]).outcome == "loop"
    assert message_row(server, ooo["Message-ID"]).outcome == "auto-reply"
    assert server.export()["posts"][0]["comments"] == []


def test_bounce_to_verp_address_is_recorded_not_published(server: RunningServer) -> None:
    p = post(server)
    dsn = reply(p, "Delivery failed", "MAILER-DAEMON <mailer-daemon@example.net>")
    server.send(dsn, to="blog+bounces@lists.example.org", mail_from="")
    assert message_row(server, dsn["Message-ID"]).outcome == "bounce"
    assert server.export()["posts"][0]["comments"] == []


@pytest.mark.parametrize("rcpt", ["someone@gmail.com", "blog@other.example",
                                  "nosuchlist@lists.example.org",
                                  "blog+post-wrongsecret@lists.example.org",
                                  "blog+frobnicate@lists.example.org"])
def test_relay_and_unknown_addresses_refused_at_rcpt(server: RunningServer, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.ehlo("relay-me.example")
        client.mail("spammer@example.net")
        code, text = client.rcpt(rcpt)
    assert code == 550 and text.startswith(b"5.1.1")


def test_oversize_message_refused(server: RunningServer) -> None:
    big = make_mail("Stor", "x" * 300_000, sender="A <a@example.net>")
    # smtplib declares the SIZE in MAIL FROM: refused there.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        server.send(big)
    assert refused.value.smtp_code == 552 and refused.value.smtp_error.startswith(b"5.3.4")
    # A client that does not declare it is refused after DATA.
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as client:
        client.ehlo("x")
        del client.esmtp_features["size"]
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@example.net", ["blog@lists.example.org"], big.as_bytes())
        assert info.value.smtp_code == 552 and info.value.smtp_error.startswith(b"5.3.4")
        # The session goes on: the next message is accepted.
        small = make_mail("Liten", "ok", sender="A <a@example.net>")
        assert client.sendmail("a@example.net", ["blog@lists.example.org"],
                               small.as_bytes()) == {}


def test_norwegian_latin1_reply_is_intact(server: RunningServer) -> None:
    p = post(server)
    body = "Sosialt entreprenørskap er viktig for Oslo. Hilsen Kirstine".encode("iso-8859-1")
    raw = (b"From: =?iso-8859-1?q?Kirstine_R=F8d?= <kirstine@example.no>\r\n"
           b"To: blog@lists.example.org\r\n"
           b"Subject: =?iso-8859-1?q?Re:_Sosialt_entrepren=F8rskap?=\r\n"
           b"Date: Fri, 09 Mar 2018 09:02:00 +0100\r\n"
           b"Message-ID: <kirstine-1@example.no>\r\n"
           b"In-Reply-To: " + p["Message-ID"].encode() + b"\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n")
    server.send(raw)
    server.idle()
    [comment] = server.export()["posts"][0]["comments"]
    assert comment["author"]["name"] == "Kirstine Rød"
    assert "entreprenørskap" in comment["text"]
    assert comment["date"] == "2018-03-09T09:02:00+01:00"


def test_lmtp_answers_per_recipient(server: RunningServer) -> None:
    p = post(server)
    c1 = reply(p, "Via LMTP.", "A <a@example.net>")
    with smtplib.LMTP("127.0.0.1", server.lmtp_port) as client:
        refused = client.sendmail("a@example.net", ["blog@lists.example.org"], c1.as_bytes())
    assert refused == {}
    server.idle()
    assert server.export()["posts"][0]["comments"][0]["message_id"] == c1["Message-ID"]


@pytest.mark.parametrize("kind", ["smtp", "lmtp"])
def test_client_that_hangs_up_without_quit_is_disconnected(server: RunningServer,
                                                            kind: str) -> None:
    """Postfix drops cached connections without QUIT: our side must close too, not linger
    half-open until the garbage collector finds the socket."""
    port = server.smtp_port if kind == "smtp" else server.lmtp_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.recv(1024).startswith(b"220")
        sock.sendall(b"LHLO x\r\n" if kind == "lmtp" else b"EHLO x\r\n")
        greeting = b""
        while b"\r\n250 " not in b"\r\n" + greeting:
            greeting += sock.recv(4096)
        sock.shutdown(socket.SHUT_WR)          # hang up, no QUIT
        rest = b""
        while chunk := sock.recv(4096):        # returns b"" once the server has closed
            rest += chunk
        assert b"250" not in rest


def test_non_author_new_thread_is_held(server: RunningServer) -> None:
    msg = make_mail("Nytt tema", "Fra en leser.", sender="Leser <leser@example.net>")
    server.send(msg)
    row = message_row(server, msg["Message-ID"])
    assert row.state == "held" and "not an author" in row.reason
    server.idle()
    notices = [m for m in outbox_mail(server.app) if m["To"] == "owner@example.org"]
    assert len(notices) == 1 and notices[0]["Reply-To"].startswith("blog+confirm-")
