"""The one way in and out of a transaction, and the one bridge from async code to it.

``Database.transaction()`` is the only place that commits. Async code calls
``await db.run(fn, *args)``: ``fn(session, *args)`` runs inside a transaction on a
worker thread. On SQLite all such calls share one thread, so writers never fight over
the file lock; on PostgreSQL a small pool runs them in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("listserver.db")
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x6D696772  # "migr"; the scheduler's lock is "list"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        lock_path = (path + ".lock") if path and path != ":memory:" else None

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            if lock_path:
                record.info["lock_fd"] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            # Take the write lock at BEGIN, so a reader never has to upgrade and deadlock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer 250, even across a power loss.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            fd = conn.connection._connection_record.info.get("lock_fd")
            if fd is not None:
                _write_lock(fd)
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "checkin")
        def _checkin(dbapi_conn: Any, record: Any) -> None:
            fd = record.info.get("lock_fd") if record is not None else None
            if fd is not None:
                _write_unlock(fd)

        @event.listens_for(engine, "close")
        def _close(dbapi_conn: Any, record: Any) -> None:
            fd = record.info.pop("lock_fd", None) if record is not None else None
            if fd is not None:
                _write_unlock(fd)
                os.close(fd)

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


_held = threading.local()


def _write_lock(fd: int) -> None:
    """Queue for SQLite's single write lock on a file lock.

    SQLite's own busy handler sleeps with growing back-off while another connection holds
    the lock, which starves the SMTP intake when the processing worker writes steadily. A
    ``flock`` waiter is woken by the kernel the moment the lock is free, in any process.
    """
    if getattr(_held, "fd", None) is not None:
        raise RuntimeError("nested database transaction in one thread")
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held.fd = fd


def _write_unlock(fd: int) -> None:
    if getattr(_held, "fd", None) == fd:
        _held.fd = None
    fcntl.flock(fd, fcntl.LOCK_UN)


class IntakeSignal:
    """Tells background writers that an SMTP session is waiting for SQLite's write lock.

    Every intake commit holds a shared ``flock`` on ``<db>.intake`` from before it queues
    for the write lock until it has committed. The processing worker asks between two
    messages whether anyone holds it (an exclusive non-blocking try) and, if so, commits
    what it has (after at least ``process.MIN_BATCH_SECONDS``) and hands the lock over: a
    client waiting for its 250 waits for some milliseconds of processing, not for a whole
    batch. On PostgreSQL intake never waits for processing, so the signal is always quiet
    there.
    """

    def __init__(self, path: str | None) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None
        # A second open file description: flock locks on one description would convert
        # into each other when intake and processing share a process.
        self._probe = os.open(path, os.O_RDWR) if path else None
        self._lock = threading.Lock()
        self._holders = 0

    @contextlib.contextmanager
    def intake(self) -> Iterator[None]:
        """Held around one intake commit (the wait for the write lock included)."""
        if self.fd is None:
            yield
            return
        with self._lock:
            if self._holders == 0:
                fcntl.flock(self.fd, fcntl.LOCK_SH)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)

    def waiting(self) -> bool:
        """Whether an intake commit (in any process) is queued or running now."""
        if self._probe is None:
            return False
        try:
            fcntl.flock(self._probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._probe, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        for fd in (self.fd, self._probe):
            if fd is not None:
                os.close(fd)
        self.fd = self._probe = None


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        path = url.split("///", 1)[-1] if self.is_sqlite else ""
        self.intake_signal = IntakeSignal(
            path + ".intake" if path and path != ":memory:" else None)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="db")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in a transaction, synchronously."""
        with self.transaction() as session:
            return fn(session, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in a transaction on the database thread(s)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, fn, *args)

    async def run_plain(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread(s), for code that opens its own transactions."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                # Several processes starting at once on one database migrate one after the
                # other (SQLite's write lock already does this): the lock is held until the
                # transaction ends, and keyed by schema like the scheduler's.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k, "
                                  "hashtext(current_schema()))"), {"k": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
        self.intake_signal.close()
