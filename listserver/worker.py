"""The processing worker: drains queued messages in arrival order, woken on each arrival.

It runs in ``serve``'s loop and does its database work on the database thread. At start it
simply finds what is still queued, which is how a restart resumes unfinished work. It also
polls every few seconds, so rows queued by another process (``inject``, a second server on
PostgreSQL, a moderator's approval from the CLI) are picked up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .process import process_batch

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.process")


HANDOFF_SECONDS = 0.002


def drain(app: App, limit: int = 500) -> int:
    """Process up to ``limit`` queued messages; return how many were handled."""
    done = 0
    while done < limit:
        count = process_batch(app, min(50, limit - done))
        if not count:
            break
        done += count
        step_aside(app)
    if done:
        app.wake_sender()
    return done


def step_aside(app: App) -> None:
    """Let the intake commits waiting for the database (SMTP sessions waiting for their
    250) take the write lock before the next batch does: the file lock does not queue
    fairly, so the worker that just released it would often get it straight back."""
    if app.db.intake_signal.waiting():
        time.sleep(HANDOFF_SECONDS)


async def run(app: App, stop: asyncio.Event, poll: float = 2.0) -> None:
    wake = app.wake_event("worker")
    while not stop.is_set():
        wake.clear()
        try:
            done = await app.db.run_plain(drain, app)
        except Exception:
            log.exception("processing worker hit an error; continuing")
            done = 0
            await asyncio.sleep(1)
        if done:
            continue
        try:
            await asyncio.wait_for(wake.wait(), timeout=poll)
        except asyncio.TimeoutError:
            pass
