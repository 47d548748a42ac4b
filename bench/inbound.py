"""Workloads 1 and 2: SMTP intake with every 250 durable, and processing end to end.

Inbound: Postfix's smtp-source sends N messages of 4 KB over S sessions to `listserver
serve`, next to Postfix's smtp-sink and a bare aiosmtpd handler in the same run. Processing:
from each message's commit (the 250) to its comment being published, as throughput and as
latency percentiles under a paced load.
"""

from __future__ import annotations

import smtplib
import statistics
import subprocess
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import create_engine, text

from common import (LISTSERVER, PYTHON, ROOT, Row, fresh_database, free_port, need, process,
                    smtp_source, wait_port, workdir, write_config)


def sink_rate(count: int, sessions: int) -> float:
    port = free_port()
    import os
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    with process([need("smtp-sink"), *user, f"127.0.0.1:{port}", "1024"]):
        wait_port(port)
        return count / smtp_source(port, sessions, count, 4096, "x@example.org")


def bare_rate(count: int, sessions: int, uvloop: bool) -> float:
    port = free_port()
    args = [PYTHON, str(ROOT / "bench" / "bare_aiosmtpd.py"), str(port)]
    with process(args + (["--uvloop"] if uvloop else [])):
        wait_port(port)
        return count / smtp_source(port, sessions, count, 4096, "x@example.org")


def start_listserver(directory: Path, db: str | None = None):  # type: ignore[no-untyped-def]
    config, smtp, http = write_config(directory, db=db)
    subprocess.run(LISTSERVER + ["--config", str(config), "init"], check=True,
                   stdout=subprocess.DEVNULL)
    proc = process(LISTSERVER + ["--config", str(config), "serve"],
                   stderr=open(directory / "serve.log", "wb"))
    return config, smtp, proc


def make_post(smtp: int) -> None:
    msg = EmailMessage()
    msg["From"] = "Ivar <ivar@example.no>"
    msg["To"] = "blog@lists.example.org"
    msg["Subject"] = "Bench post"
    msg["Message-ID"] = "<bench-post@example.no>"
    msg.set_content("A post to comment on.")
    with smtplib.SMTP("127.0.0.1", smtp) as client:
        client.sendmail("ivar@example.no", ["blog+post-benchsecret@lists.example.org"],
                        msg.as_bytes())


def db_url(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("url = "):
            return line.split('"')[1]
    raise RuntimeError("no url")


def reply_address(engine, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            token = conn.execute(text("select thread_token from posts")).scalar()
        if token:
            return f"blog+reply-{token}@lists.example.org"
        time.sleep(0.1)
    raise RuntimeError("the bench post was not published")


def wait_processed(engine, expected: int, timeout: float = 600) -> float:  # type: ignore
    """Seconds until `expected` comments are published."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        with engine.connect() as conn:
            done = conn.execute(text("select count(*) from comments")).scalar_one()
        if done >= expected:
            return time.perf_counter() - start
        time.sleep(0.05)
    raise RuntimeError(f"only {done} of {expected} processed in {timeout}s")


def listserver_rates(count: int, sessions: int, db: str | None) -> tuple[float, float]:
    """(accepted messages/s, end-to-end processed messages/s)."""
    with workdir() as tmp, fresh_database(db) as db:
        config, smtp, proc = start_listserver(Path(tmp), db)
        with proc:
            wait_port(smtp)
            make_post(smtp)
            engine = create_engine(db_url(config))
            to = reply_address(engine)
            seconds = smtp_source(smtp, sessions, count, 4096, to)
            with engine.connect() as conn:
                stored = conn.execute(text(
                    "select count(*) from messages where source = 'smtp'")).scalar_one()
            assert stored >= count, f"only {stored} of {count} stored"
            rest = wait_processed(engine, count)
            engine.dispose()
            return count / seconds, count / (seconds + rest)


def latency(rate: float, seconds: float, db: str | None) -> tuple[float, float]:
    """p50 and p99 seconds from commit (250) to publication at a paced `rate`."""
    with workdir() as tmp, fresh_database(db) as db:
        config, smtp, proc = start_listserver(Path(tmp), db)
        with proc:
            wait_port(smtp)
            make_post(smtp)
            engine = create_engine(db_url(config))
            to = reply_address(engine)
            total = int(rate * seconds)
            body = ("x" * 76 + "\r\n") * 50

            def pace(worker: int, workers: int) -> None:
                with smtplib.SMTP("127.0.0.1", smtp) as client:
                    start = time.perf_counter()
                    for i in range(worker, total, workers):
                        delay = start + i / rate - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        raw = (f"From: r{i}@example.net\r\nTo: {to}\r\nSubject: Re: x\r\n"
                               f"Message-ID: <lat-{i}@example.net>\r\n\r\n{body}")
                        client.sendmail(f"r{i}@example.net", [to], raw.encode())
            threads = [threading.Thread(target=pace, args=(w, 4)) for w in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_processed(engine, total)
            with engine.connect() as conn:
                rows = conn.execute(text(
                    "select received_at, processed_at from messages "
                    "where message_id like '<lat-%'")).all()
            engine.dispose()

    def seconds_between(a: object, b: object) -> float:
        from datetime import datetime
        if isinstance(a, str):
            a, b = datetime.fromisoformat(a), datetime.fromisoformat(str(b))
        return (b - a).total_seconds()  # type: ignore[operator]
    lat = sorted(seconds_between(r[0], r[1]) for r in rows)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def run(count: int, db: str | None = None) -> list[Row]:
    rows: list[Row] = []
    for sessions in (10, 50):
        sink = sink_rate(count, sessions)
        bare = bare_rate(count, sessions, uvloop=False)
        bare_uv = bare_rate(count, sessions, uvloop=True)
        accepted, end_to_end = listserver_rates(count, sessions, db)
        name = f"inbound {count:,}×4KB, {sessions} sessions"
        rows.append(Row(name, "listserver accepted (250 durable)", accepted, "msg/s",
                        "bare aiosmtpd", bare, "≥ 2,000 msg/s and > bare aiosmtpd"))
        rows.append(Row(name, "bare aiosmtpd + uvloop", bare_uv, "msg/s", "smtp-sink", sink))
        rows.append(Row(name, "listserver vs smtp-sink", accepted, "msg/s", "smtp-sink", sink))
        if sessions == 10:
            rows.append(Row(name, "processing end to end (250 → published)", end_to_end,
                            "msg/s", target="≥ 500 msg/s"))
    p50, p99 = latency(100, 10, db)
    rows.append(Row("processing at 100 msg/s", "p50 latency 250 → published", p50 * 1000,
                    "ms"))
    rows.append(Row("processing at 100 msg/s", "p99 latency 250 → published", p99 * 1000,
                    "ms", target="< 1,000 ms"))
    return rows
