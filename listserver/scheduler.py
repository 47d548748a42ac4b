"""The scheduler: APScheduler 3 inside ``serve``, its jobs in the same database.

Jobs are rows of ``JOBS`` (name, trigger) plus per-list rows from ``list_jobs``; each job
is a plain function of the App in ``jobs`` that asks ``app.now()`` what is due, so tests
run them with a fake clock and never sleep. APScheduler only decides *when* to call them:
its SQLAlchemy job store keeps the next run times in the database, and ``coalesce`` makes a
run missed during downtime happen once at start, not once per missed period.

One scheduler runs at a time, however many ``serve`` processes share the database: the one
that holds the scheduler lock (a PostgreSQL advisory lock held by an open connection, or a
file lock next to the SQLite file). When its process dies, the lock goes with it and another
process takes over within ``scheduler.takeover_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text

from . import jobs
from .db import make_engine

if TYPE_CHECKING:
    from .app import App
    from .config import Config, ListConfig

log = logging.getLogger("listserver.scheduler")

ADVISORY_KEY = 0x6C697374  # "list"

# (job name, trigger from the config). The functions live in ``jobs`` under the same name.
JOBS: list[tuple[str, Callable[[Config], Any]]] = [
    ("publish_due", lambda config: IntervalTrigger(
        seconds=int(config.scheduler["publish_interval"]))),
    ("expire_tokens", lambda config: IntervalTrigger(hours=1)),
    ("expire_held", lambda config: IntervalTrigger(hours=1)),
]


def list_jobs(lst: ListConfig) -> list[tuple[str, str, Any]]:
    """Per-list jobs: (job id, job name, trigger) in the list's own time zone."""
    return [(f"{name}:{lst.name}", name, trigger) for name, trigger in
             jobs.per_list_triggers(lst)]


class SchedulerLock:
    """Held by exactly one process at a time; released by the kernel or the database when
    its holder dies."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._conn: Any = None
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self.app.db.is_sqlite:
            if self._fd is None:
                path = self.app.config.database_url.split("///", 1)[-1] + ".scheduler"
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        if self._conn is None:
            self._conn = self.app.db.engine.connect()
        # Keyed by schema too, so that installations sharing a database do not collide.
        got = self._conn.execute(text(
            "SELECT pg_try_advisory_lock(:k, hashtext(current_schema()))"),
            {"k": ADVISORY_KEY}).scalar()
        self._conn.commit()
        return bool(got)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            # The connection goes back to the pool, not away: unlock explicitly.
            try:
                self._conn.execute(text(
                    "SELECT pg_advisory_unlock_all()"))
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None


def wanted_jobs(app: App) -> list[tuple[str, str, Any, list[str]]]:
    """(id, function reference, trigger, args) of every job this configuration wants."""
    out: list[tuple[str, str, Any, list[str]]] = [
        (name, f"listserver.jobs:{name}", trigger(app.config), []) for name, trigger in JOBS]
    for lst in app.config.lists.values():
        for job_id, name, trigger in list_jobs(lst):
            out.append((job_id, "listserver.jobs:run_per_list", trigger, [name, lst.name]))
    return out


def start(app: App, paused: bool = False) -> AsyncIOScheduler:
    """Start APScheduler on the persistent store and bring its jobs in line with the config.

    A job whose trigger is unchanged keeps its stored next run time: that is what lets a run
    missed during downtime happen (once) at start. Jobs no longer wanted are removed.
    """
    jobs.register(app)
    scheduler = AsyncIOScheduler(
        # Its own engine: APScheduler disposes of the job store's engine at shutdown.
        jobstores={"default": SQLAlchemyJobStore(engine=make_engine(app.db.url))},
        job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        timezone="UTC")
    scheduler.start(paused=True)
    wanted = wanted_jobs(app)
    for job_id, ref, trigger, args in wanted:
        existing = scheduler.get_job(job_id)
        if existing is not None and str(existing.trigger) == str(trigger) \
                and list(existing.args) == args and existing.func_ref == ref:
            continue
        scheduler.add_job(ref, trigger, args=args, id=job_id, name=job_id,
                          replace_existing=True)
    keep = {job_id for job_id, *_ in wanted}
    for job in scheduler.get_jobs():
        if job.id not in keep:
            job.remove()
    if not paused:
        scheduler.resume()
    return scheduler


async def run(app: App, stop: asyncio.Event) -> None:
    """Wait for the scheduler lock, then run the scheduler until ``stop``."""
    lock = SchedulerLock(app)
    takeover = float(app.config.scheduler["takeover_interval"])
    try:
        while not stop.is_set():
            if lock.try_acquire():  # one quick query; not worth a thread it could outlive
                break
            try:
                await asyncio.wait_for(stop.wait(), takeover)
            except asyncio.TimeoutError:
                pass
        if stop.is_set():
            return
        scheduler = start(app)
        log.info("scheduler running: %s", ", ".join(j.id for j in scheduler.get_jobs()))
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
    finally:
        lock.release()
