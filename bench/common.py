"""Shared pieces of the benchmarks: ports, processes that must always be stopped, timing,
and the table. Loopback only; every workload is bounded in count and time."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Children import this checkout's listserver, whatever the current directory or the
# virtualenv's installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
LISTSERVER = [PYTHON, "-m", "listserver.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextlib.contextmanager
def process(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process in its own group; always stop the whole group."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}")
                                  else None)
    if path is None:
        raise SystemExit(f"bench needs {tool} (apt-get install postfix for smtp-source/sink)")
    return path


def smtp_source(port: int, sessions: int, count: int, size: int, to: str,
                timeout: float = 300) -> float:
    """Send with Postfix's smtp-source; return the seconds it took."""
    start = time.perf_counter()
    subprocess.run([need("smtp-source"), "-s", str(sessions), "-m", str(count), "-l",
                    str(size), "-f", "bench@example.net", "-t", to, f"127.0.0.1:{port}"],
                   check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_of(rounds: int, fn: object) -> float:
    return statistics.median(fn() for _ in range(rounds))  # type: ignore[operator]


@dataclass
class Row:
    workload: str
    figure: str
    value: float
    unit: str
    reference: str = ""
    ref_value: float = 0.0
    target: str = ""

    def cells(self) -> list[str]:
        ratio = f"{self.value / self.ref_value:.2f}×" if self.ref_value else ""
        ref = ""
        if self.reference:
            ref = f"{number(self.ref_value)} {self.unit} ({self.reference})" \
                if self.ref_value else self.reference
        return [self.workload, self.figure, f"{number(self.value)} {self.unit}", ref, ratio,
                self.target]


def number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}" if value >= 10 \
        else f"{value:,.2f}"


def print_table(rows: list[Row], file: object = None) -> None:
    head = ["workload", "figure", "value", "reference (same run)", "ratio", "target"]
    cells = [head] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    out = file or sys.stdout
    print(line, file=out)  # type: ignore[call-overload]
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)  # type: ignore
    for c in cells[1:]:
        print("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |",
              file=out)  # type: ignore[call-overload]
    if hasattr(out, "flush"):
        out.flush()  # type: ignore[union-attr]


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="listserver-bench-")


CONFIG = """
[site]
domain = "lists.example.org"
base_url = "http://127.0.0.1:{http}"
[smtp]
port = {smtp}
max_message_size = 1000000
[http]
port = {http}
[database]
url = "{db}"
[outbound]
transport = "{transport}"
host = "127.0.0.1"
port = {relay}
[[list]]
name = "blog"
title = "Bench"
authors = ["ivar@example.no"]
owners = ["owner@example.org"]
post_secret = "benchsecret"
"""


@contextlib.contextmanager
def fresh_database(url: str | None) -> Iterator[str | None]:
    """A PostgreSQL URL pointing at a new, empty schema, dropped afterwards; every run
    starts from nothing, as it does on SQLite with a new file. None stays None."""
    if not url:
        yield None
        return
    import uuid

    from sqlalchemy import create_engine, text
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def write_config(directory: Path, *, db: str | None = None, transport: str = "maildir",
                 relay: int = 25) -> tuple[Path, int, int]:
    smtp, http = free_port(), free_port()
    db = db or f"sqlite:///{directory / 'bench.sqlite3'}"
    path = directory / "config.toml"
    path.write_text(CONFIG.format(smtp=smtp, http=http, db=db, transport=transport,
                                  relay=relay))
    return path, smtp, http


def run_measured(args: list[str], timeout: float = 900, **kwargs: object
                 ) -> tuple[float, float, str]:
    """Run a child to completion: (seconds, peak RSS in MB, its stdout).

    The peak resident set comes from the child's own rusage (wait4), so it is that
    process's high-water mark only. The child is killed if it outlives ``timeout``."""
    import threading
    started = time.perf_counter()
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE,
                            **kwargs)  # type: ignore[call-overload]
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    timer = threading.Timer(timeout, lambda: _kill_group(proc.pid))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    _kill_group(proc.pid)  # anything it left behind
    text = b"".join(out).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{args[2:5]} exited {proc.returncode}: {text[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (as nobody when we are root)."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    with process([need("smtp-sink"), *user, f"127.0.0.1:{port}", "1024"]):
        wait_port(port)
        yield port
