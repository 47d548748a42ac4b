"""Workload 3: one post announced to N subscribers, delivered to Postfix's smtp-sink.

`listserver deliver` (transport = "smtp", the default 10 relay connections) drains the
outbox that one published post filled with N rows, next to Postfix's smtp-source sending
the same number of messages of the same size to the same smtp-sink in the same run. The
figures: personalised mails per second over the whole `deliver` run (start-up included),
and the deliver process's peak RSS (its own rusage, so without the signing workers), at N
and at N/10 subscribers (flat memory). A second run signs every mail with DKIM (RSA 2048).
"""

from __future__ import annotations

import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, insert, text

from common import (LISTSERVER, Row, free_port, run_measured, smtp_sink, smtp_source,
                    workdir)

CONFIG = """
[site]
domain = "lists.example.org"
base_url = "http://127.0.0.1:{http}"
[database]
url = "sqlite:///{dir}/bench.sqlite3"
[outbound]
transport = "smtp"
host = "127.0.0.1"
port = {relay}
concurrency = 10
dkim_key_file = "{key}"
[archive]
search = false
[[list]]
name = "blog"
title = "Sosialt entreprenørskap"
authors = ["ivar@example.no"]
language = "nb"
timezone = "Europe/Oslo"
post_secret = "benchsecret"
"""

POST = """From: Ivar Johansen <ivar@example.no>
To: blog@lists.example.org
Subject: Sosialt entreprenørskap: Status i Oslo kommune
Message-ID: <fanout-post@example.no>
Date: Fri, 09 Mar 2018 08:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Byrådet har i dag lagt fram en status for arbeidet med sosialt entreprenørskap i Oslo
kommune. Her er hovedpunktene, og jeg vil gjerne høre hva dere mener.

""" + ("Sosiale entreprenører løser samfunnsutfordringer med nye metoder, og kommunen "
       "kjøper tjenester, gir tilskudd og deler kunnskap. Vi har lært mye det siste året.\n\n"
       ) * 8


def prepare(directory: Path, subscribers: int, relay: int, dkim: bool) -> Path:
    """A database with `subscribers` active subscriptions and one post queued to all."""
    key = ""
    if dkim:
        from listserver.dkim import generate_keypair
        pem, _ = generate_keypair(2048)
        (directory / "dkim.pem").write_bytes(pem)
        key = str(directory / "dkim.pem")
    config = directory / "config.toml"
    config.write_text(CONFIG.format(http=free_port(), dir=directory, relay=relay, key=key))
    subprocess.run(LISTSERVER + ["--config", str(config), "init"], check=True,
                   stdout=subprocess.DEVNULL)
    engine = create_engine(f"sqlite:///{directory}/bench.sqlite3")
    from listserver.models import Subscription
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for start in range(0, subscribers, 10_000):
            conn.execute(insert(Subscription), [
                dict(list_name="blog", address=f"reader{n}@example.net",
                     name=f"Leser {n}" if n % 3 else "", mode="all", state="active",
                     bounce_score=0.0, created_at=now, confirmed_at=now,
                     digest_format="text")
                for n in range(start, min(subscribers, start + 10_000))])
    (directory / "post.eml").write_text(POST)
    subprocess.run(LISTSERVER + ["--config", str(config), "inject", "blog",
                                 str(directory / "post.eml"), "--to",
                                 "blog+post-benchsecret@lists.example.org"],
                   check=True, stdout=subprocess.DEVNULL)
    with engine.connect() as conn:
        queued = conn.execute(text("select count(*) from outbox where kind = 'post'")
                              ).scalar_one()
    engine.dispose()
    assert queued == subscribers, f"{queued} of {subscribers} queued"
    return config


def deliver(subscribers: int, dkim: bool) -> tuple[float, float, int]:
    """(mails/s, peak RSS MB, mail size) of `listserver deliver` to smtp-sink."""
    with workdir() as tmp, smtp_sink() as port:
        directory = Path(tmp)
        config = prepare(directory, subscribers, port, dkim)
        seconds, peak, out = run_measured(LISTSERVER + ["--config", str(config), "deliver"],
                                          timeout=600)
        engine = create_engine(f"sqlite:///{directory}/bench.sqlite3")
        with engine.connect() as conn:
            sent = conn.execute(text("select count(*) from outbox where state = 'sent'")
                                ).scalar_one()
        engine.dispose()
        assert sent == subscribers, f"only {sent} of {subscribers} sent: {out}"
        return subscribers / seconds, peak, mail_size(directory)


def mail_size(directory: Path) -> int:
    """Size of one personalised mail, rendered as the sender renders it (nothing claimed)."""
    import sys
    code = f"""
from pathlib import Path
from sqlalchemy import select
from listserver.app import App
from listserver.config import load_config
from listserver.models import Outbox
from listserver.plugins import install
from listserver.sender import Pending
app = App(load_config(Path({str(directory / 'config.toml')!r})))
install(app)
with app.db.transaction() as session:
    row = session.execute(select(Outbox).limit(1)).scalar_one()
    pending = Pending(row.id, row.list_name, row.kind, row.ref, row.recipient,
                      row.envelope_from, row.content, row.attempts, row.created_at,
                      row.subscription_id, "Leser 1")
    print(len(app.renderers[row.kind](session, pending).content))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return int(done.stdout.strip())


def sink_reference(count: int, size: int, rounds: int = 3) -> float:
    """smtp-source → smtp-sink over 10 sessions, the same number and size: median rate."""
    rates = []
    for _ in range(rounds):
        with smtp_sink() as port:
            rates.append(count / smtp_source(port, 10, count, size, "reader@example.net"))
    return statistics.median(rates)


def run(subscribers: int = 100_000, dkim_subscribers: int = 100_000) -> list[Row]:
    rows: list[Row] = []
    small = max(1, subscribers // 10)
    rate, peak, size = deliver(subscribers, dkim=False)
    reference = sink_reference(subscribers, size)
    name = f"fan-out 1 post → {subscribers:,} (smtp)"
    rows.append(Row(name, f"personalised mails to smtp-sink ({size:,} B)", rate, "msg/s",
                    "smtp-source → smtp-sink", reference, "≥ 4,000 msg/s (< 25 s)"))
    _, peak_small, _ = deliver(small, dkim=False)
    rows.append(Row(name, "peak RSS of deliver", peak, "MB",
                    f"at {small:,} subscribers", peak_small, "flat"))
    if dkim_subscribers:
        rate_dkim, peak_dkim, _ = deliver(dkim_subscribers, dkim=True)
        name = f"fan-out 1 post → {dkim_subscribers:,} (smtp)"
        rows.append(Row(name, "with DKIM (RSA 2048)", rate_dkim, "msg/s",
                        "smtp-source → smtp-sink", reference))
        rows.append(Row(name, "peak RSS with DKIM", peak_dkim, "MB"))
    return rows
