"""A generated mailing-list archive: threads of replies as an mbox, deterministic per seed.

Like a real list archive: mostly in arrival order, but a few replies come before the
message they answer (delivery delays), some are Norwegian ISO-8859-1 mail, some replies
carry only In-Reply-To or only References. Every message has a unique word in its body
(``marker(n)``) for search tests. ``variety=True`` (the benchmarks) also makes about a third
of the threads English, with longer bodies, and some messages HTML (multipart/alternative);
it draws from a second random stream, so the default archive is the same as without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

NAMES = ["Kirstine", "Ola Nordmann", "Kari", "Per", "Åse Bø", "Ivar", "Mia", "Jon"]


def marker(n: int) -> str:
    return f"ordmerke{n:06d}x"


@dataclass
class Generated:
    path: Path
    messages: int
    threads: int
    parent: dict[str, str | None] = field(default_factory=dict)   # Message-ID -> parent ID
    root: dict[str, str] = field(default_factory=dict)            # Message-ID -> thread root


def generate(path: Path, messages: int = 10_000, seed: int = 5, late: float = 0.03,
             list_address: str = "blog@lists.example.org", variety: bool = False) -> Generated:
    rnd = random.Random(seed)
    extra = random.Random(seed + 1) if variety else None
    out = Generated(path, 0, 0)
    start = datetime(2015, 1, 1, tzinfo=timezone.utc)
    order: list[tuple[float, bytes]] = []
    n = 0
    while n < messages:
        size = min(messages - n, max(1, int(rnd.expovariate(1 / 10))))
        out.threads += 1
        ids: list[str] = []
        refs: dict[str, list[str]] = {}
        t0 = (start + timedelta(hours=7 * out.threads)).timestamp()
        for k in range(size):
            mid = f"<gen{n}.{seed}@example.net>"
            parent = rnd.choice(ids[-5:]) if ids else None
            chain = refs[parent] + [parent] if parent else []
            refs[mid] = chain
            out.parent[mid] = parent
            out.root[mid] = ids[0] if ids else mid
            when = t0 + k * 600 + rnd.randint(0, 300)
            if parent and rnd.random() < late:
                when -= 900  # arrives before the message it answers
            order.append((when, _message(rnd, n, mid, parent, chain, out.threads, when,
                                         list_address, extra)))
            ids.append(mid)
            n += 1
    order.sort(key=lambda x: x[0])
    with open(path, "wb") as fh:
        for when, raw in order:
            stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%a %b %d %H:%M:%S %Y")
            fh.write(f"From sender@example.net {stamp}\n".encode() + raw + b"\n")
    out.messages = n
    return out


ENGLISH = ("Thanks for the update. I think the city should keep funding the pilot, but "
           "we need better numbers on what it costs and who it reaches. Has anyone compared "
           "this with what Bergen did last year? See https://example.org/report-{n} for ours.")
NORSK = ("Takk for oppdateringen. Jeg mener kommunen bør fortsette å støtte prosjektet, men "
         "vi trenger bedre tall på hva det koster og hvem det når. Har noen sammenlignet "
         "dette med Bergen i fjor? Se https://example.org/rapport-{n} for vår.")


def _message(rnd: random.Random, n: int, mid: str, parent: str | None, chain: list[str],
             thread: int, when: float, to: str, extra: random.Random | None = None) -> bytes:
    name = rnd.choice(NAMES)
    latin1 = rnd.random() < 0.2
    subject = f"Tråd nummer {thread} om sosialt entreprenørskap"
    english = extra is not None and thread % 3 == 0
    if english:
        subject = f"Thread number {thread} about social entrepreneurship"
    if parent:
        subject = "Re: " + subject
    body = (f"Hei! Dette er melding {n} med ordet {marker(n)}.\n"
            f"Blåbærsyltetøy og {rnd.choice(['kommune', 'frivillighet', 'arbeid'])}.\n")
    if extra is not None:
        paragraph = (ENGLISH if english else NORSK).format(n=n)
        body += "\n" + "\n\n".join([paragraph] * extra.randint(1, 4)) + "\n"
    if parent:
        body += f"\n> sitat fra {parent}\n> mer sitat\n"
    date = format_datetime(datetime.fromtimestamp(when, timezone.utc))
    headers = [f"From: {name} <user{n % 97}@example.net>", f"To: {to}", f"Date: {date}",
               f"Message-ID: {mid}"]
    charset = "iso-8859-1" if latin1 else "utf-8"
    subject_bytes = subject.encode("utf-8")
    if not subject.isascii():
        import base64
        subject_bytes = b"=?utf-8?b?" + base64.b64encode(subject.encode()) + b"?="
    if parent:
        style = rnd.random()
        if style < 0.1:
            headers.append(f"In-Reply-To: {parent}")
        elif style < 0.2:
            headers.append(f"References: {' '.join(chain)}")
        else:
            headers.append(f"In-Reply-To: {parent}")
            headers.append(f"References: {' '.join(chain)}")
    if extra is not None and extra.random() < 0.15:  # HTML mail, as some clients send it
        import html
        rich = "".join(f"<p>{html.escape(p)}</p>" for p in body.split("\n\n"))
        rich = f"<html><body><div style=\"font-family:Arial\">{rich}</div></body></html>"
        head = "\n".join(headers).encode() + b"\nSubject: " + subject_bytes + (
            "\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"b\"\n\n"
            "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            ).encode()
        return (head + body.encode() + b"\n--b\nContent-Type: text/html; charset=utf-8\n"
                b"Content-Transfer-Encoding: 8bit\n\n" + rich.encode() + b"\n--b--\n")
    head = "\n".join(headers).encode() + b"\nSubject: " + subject_bytes + (
        f"\nMIME-Version: 1.0\nContent-Type: text/plain; charset={charset}\n"
        "Content-Transfer-Encoding: 8bit\n\n").encode()
    return head + body.encode(charset)
