"""Digests and batched announcements, with an injected clock (no sleeping)."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from listserver import digest as digest_module
from listserver.announce import announce_after, announce_due_now, digest_trigger
from listserver.config import parse_config
from listserver.digest import run_digest
from listserver.models import Outbox
from listserver.subscriptions import subscribe_now

from conftest import Clock, POST_SECRET, RunningServer, config_dict, make_mail

OSLO = ZoneInfo("Europe/Oslo")



def subscribe(app, address: str, mode: str = "digest") -> None:  # type: ignore[no-untyped-def]
    lst = app.config.lists["blog"]
    app.db.call(lambda s: subscribe_now(app, s, lst, address, "", mode))


def digests(app) -> dict[str, list[email.message.EmailMessage]]:  # type: ignore
    rows = app.db.call(lambda s: s.execute(select(Outbox.recipient, Outbox.content).where(
        Outbox.kind == "digest").order_by(Outbox.id)).all())
    out: dict[str, list[email.message.EmailMessage]] = {}
    for recipient, content in rows:
        out.setdefault(recipient, []).append(
            email.message_from_bytes(content, policy=email.policy.default))
    return out


def text_of(msg: email.message.EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.fixture
def clocked(tmp_path: Path, database_url: str, make_app):  # type: ignore[no-untyped-def]
    clock = Clock(datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc))
    app = make_app(parse_config(config_dict(database_url), root=tmp_path), clock=clock)
    with RunningServer(app) as server:
        yield server, clock


def post_and_comments(server: RunningServer, title: str, *texts: str) -> list:  # type: ignore
    p = make_mail(title, f"Innlegget {title}.", sender="Ivar <ivar@example.no>")
    server.send(p, to=f"blog+post-{POST_SECRET}@lists.example.org")
    server.idle()
    sent = [p]
    for i, text in enumerate(texts):
        parent = sent[-1] if i % 2 else p
        c = make_mail("Re: " + title, text, sender=f"Leser {i} <leser{i}@example.net>",
                      in_reply_to=parent["Message-ID"])
        server.send(c)
        server.idle()
        sent.append(c)
    return sent


def test_digest_holds_exactly_what_is_new_for_each_subscriber(clocked) -> None:  # type: ignore
    server, clock = clocked
    app = server.app
    subscribe(app, "anne@example.net")
    clock.now += timedelta(minutes=10)
    post_and_comments(server, "Første", "Kommentar en", "Kommentar to")
    clock.now += timedelta(minutes=10)
    subscribe(app, "bjorn@example.net")        # after those: gets none of them
    clock.now += timedelta(hours=1)
    assert run_digest(app, "blog") == 1
    [first] = digests(app)["anne@example.net"]
    body = text_of(first)
    assert first["Subject"] == "[Sosialt entreprenørskap] Sammendrag, årgang 2026, nr. 1"
    assert "Første" in body and "#1 Leser 0" in body and "#2 Leser 1" in body
    assert "Kommentar to" in body and body.count("Svar: mailto:") == 3
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert run_digest(app, "blog") == 0         # a second run sends nothing
    clock.now += timedelta(minutes=5)
    post_and_comments(server, "Andre", "Ny kommentar")
    clock.now += timedelta(hours=1)
    assert run_digest(app, "blog") == 2
    mails = digests(app)
    [second] = mails["anne@example.net"][1:]
    assert second["Subject"].endswith("nr. 2")
    assert "Andre" in text_of(second) and "Første" not in text_of(second)
    [only] = mails["bjorn@example.net"]
    assert "Andre" in text_of(only) and "Kommentar en" not in text_of(only)
    # Sent like any mail: the sender delivers them to the Maildir outbox.
    server.idle()


def test_nothing_new_sends_nothing(clocked) -> None:  # type: ignore
    server, clock = clocked
    subscribe(server.app, "anne@example.net")
    clock.now += timedelta(days=1)
    assert run_digest(server.app, "blog") == 0
    assert digests(server.app) == {}


def test_interrupted_run_sends_nobody_a_duplicate(clocked, monkeypatch) -> None:  # type: ignore
    server, clock = clocked
    app = server.app
    for i in range(5):
        subscribe(app, f"s{i}@example.net")
    clock.now += timedelta(minutes=1)
    post_and_comments(server, "Innlegg", "En kommentar")
    clock.now += timedelta(hours=1)
    monkeypatch.setattr(digest_module, "CHUNK", 2)
    real_queue = digest_module._queue
    calls = {"n": 0}

    def crash_on_fourth(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("the process died here")
        return real_queue(*args, **kwargs)
    monkeypatch.setattr(digest_module, "_queue", crash_on_fourth)
    with pytest.raises(RuntimeError):
        run_digest(app, "blog")
    assert sorted(digests(app)) == ["s0@example.net", "s1@example.net"]  # first chunk only
    monkeypatch.setattr(digest_module, "_queue", real_queue)
    assert run_digest(app, "blog") == 3               # the rest, after the restart
    mails = digests(app)
    assert sorted(mails) == [f"s{i}@example.net" for i in range(5)]
    assert all(len(m) == 1 for m in mails.values())


def test_concurrent_digest_runs_send_no_duplicate(clocked, monkeypatch) -> None:  # type: ignore
    """``listserver digest --now`` while the scheduler's run is half-way (or two schedulers
    in a takeover): the second run must not send what the first is sending."""
    import threading

    server, clock = clocked
    app = server.app
    for i in range(4):
        subscribe(app, f"s{i}@example.net")
    clock.now += timedelta(minutes=1)
    post_and_comments(server, "Innlegg", "En kommentar")
    clock.now += timedelta(hours=1)
    real_queue = digest_module._queue
    inside, go = threading.Event(), threading.Event()

    def first_run_pauses(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "first" and not inside.is_set():
            inside.set()                    # mid-transaction: watermarks moved, not committed
            assert go.wait(30)
        return real_queue(*args, **kwargs)
    monkeypatch.setattr(digest_module, "_queue", first_run_pauses)
    counts: dict[str, int] = {}
    runs = [threading.Thread(target=lambda n=n: counts.__setitem__(n, run_digest(app, "blog")),
                             name=n) for n in ("first", "second")]
    runs[0].start()
    assert inside.wait(30)
    runs[1].start()
    runs[1].join(1)                         # it runs, or waits for the first one's rows
    go.set()
    for t in runs:
        t.join(30)
    assert counts["first"] + counts["second"] == 4
    mails = digests(app)
    assert sorted(mails) == [f"s{i}@example.net" for i in range(4)]
    assert all(len(m) == 1 for m in mails.values()), {k: len(v) for k, v in mails.items()}


def test_replying_to_a_digest_item_threads_under_it(clocked) -> None:  # type: ignore
    server, clock = clocked
    app = server.app
    subscribe(app, "anne@example.net")
    clock.now += timedelta(minutes=1)
    _, c1, _ = post_and_comments(server, "Tråd", "Den første", "Den andre")
    clock.now += timedelta(hours=1)
    run_digest(app, "blog")
    [mail] = digests(app)["anne@example.net"]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    links = re.findall(r'href="(mailto:[^"]+)"', html)
    link = next(unquote(l.replace("&amp;", "&")) for l in links if "reply-" in l and
                c1["Message-ID"].strip("<>") in unquote(l))
    url = urlparse(link)
    query = parse_qs(url.query)
    reply = make_mail(query["Subject"][0], "Svar fra sammendraget.",
                      sender="Anne <anne@example.net>", to=url.path,
                      in_reply_to=query["In-Reply-To"][0])
    server.send(reply, to=url.path)
    server.idle()
    comments = {c["message_id"]: c for c in server.export()["posts"][0]["comments"]}
    assert comments[reply["Message-ID"]]["parent"] == c1["Message-ID"]


def test_mime_digest_carries_the_original_messages(clocked) -> None:  # type: ignore
    server, clock = clocked
    app = server.app
    subscribe(app, "mime@example.net")
    from listserver.models import Subscription
    app.db.call(lambda s: s.execute(select(Subscription)).scalar_one().__setattr__(
        "digest_format", "mime"))
    clock.now += timedelta(minutes=1)
    sent = post_and_comments(server, "Mime", "En", "To")
    clock.now += timedelta(hours=1)
    run_digest(app, "blog")
    [mail] = digests(app)["mime@example.net"]
    [digest_part] = [p for p in mail.walk() if p.get_content_type() == "multipart/digest"]
    inner = [p.get_payload(0)["Message-ID"] for p in digest_part.iter_parts()]
    assert inner == [m["Message-ID"] for m in sent]


def test_daylight_saving_moves_no_digest(config) -> None:
    lst = config.lists["blog"]                      # Europe/Oslo, 07:00
    trigger = digest_trigger(lst)
    fire = trigger.get_next_fire_time(None, datetime(2026, 3, 27, 12, 0, tzinfo=OSLO))
    local_times = []
    for _ in range(4):                              # 28, 29 (DST starts), 30, 31 March
        local_times.append(fire.astimezone(OSLO).strftime("%d %H:%M"))
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    assert local_times == ["28 07:00", "29 07:00", "30 07:00", "31 07:00"]
    fire = trigger.get_next_fire_time(None, datetime(2026, 10, 24, 12, 0, tzinfo=OSLO))
    autumn = [fire.astimezone(OSLO).strftime("%d %H:%M"),
              trigger.get_next_fire_time(fire, fire + timedelta(seconds=1)).astimezone(
                  OSLO).strftime("%d %H:%M")]
    assert autumn == ["25 07:00", "26 07:00"]


def test_night_posts_are_announced_together_at_announce_at(tmp_path: Path, database_url: str,
                                                            make_app) -> None:
    data = config_dict(database_url, blog={"announce_at": "07:00"})
    clock = Clock(datetime(2026, 5, 4, 21, 30, tzinfo=timezone.utc))  # 23:30 in Oslo
    app = make_app(parse_config(data, root=tmp_path), clock=clock)
    lst = app.config.lists["blog"]
    assert announce_after(lst, datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)) is None
    with RunningServer(app) as server:
        subscribe(app, "anne@example.net", "posts")
        post_and_comments(server, "Nattinnlegg")
        assert [p["title"] for p in server.export()["posts"]] == ["Nattinnlegg"]

        def queued() -> int:
            return app.db.call(lambda s: s.execute(select(func.count()).select_from(
                Outbox).where(Outbox.kind == "post")).scalar_one())
        assert queued() == 0
        clock.now = datetime(2026, 5, 5, 4, 59, tzinfo=timezone.utc)   # 06:59 in Oslo
        assert announce_due_now(app) == 0
        clock.now = datetime(2026, 5, 5, 5, 0, tzinfo=timezone.utc)    # 07:00
        assert announce_due_now(app) == 1
        assert announce_due_now(app) == 0
        assert queued() == 1


def test_the_scheduler_runs_each_lists_digest_at_its_time(clocked) -> None:  # type: ignore
    from listserver import jobs
    from listserver.scheduler import wanted_jobs
    server, clock = clocked
    app = server.app
    wanted = {job_id: (ref, trigger, args) for job_id, ref, trigger, args in wanted_jobs(app)}
    ref, trigger, args = wanted["digest:blog"]
    assert ref == "listserver.jobs:run_per_list" and args == ["digest", "blog"]
    assert str(trigger) == str(digest_trigger(app.config.lists["blog"]))
    subscribe(app, "anne@example.net")
    clock.now += timedelta(minutes=1)
    post_and_comments(server, "Via jobben", "En kommentar")
    clock.now += timedelta(hours=1)
    jobs.register(app)
    assert jobs.run_per_list(*args) == 1
