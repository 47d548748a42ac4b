"""Digests and batched announcements as scheduled jobs, wired into the App.

* ``digest``: a per-list cron job at ``digest_time`` in the list's time zone (daily, or
  weekly on ``digest_day``). APScheduler's cron trigger works in local time, so the
  change to and from daylight-saving time moves no digest by an hour.
* ``announce_at``: a post published at night (from ``quiet_from`` until ``announce_at``,
  local time) is published at once but announced at ``announce_at``, together with the
  other posts of the night. The publish hook marks it; ``announce_due`` sends it.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import jobs
from .config import ListConfig
from .digest import run_digest
from .models import Post

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.scheduler")


def digest_trigger(lst: ListConfig) -> CronTrigger:
    hour, minute = (int(x) for x in lst.digest_time.split(":"))
    day = lst.digest_day if lst.digest_frequency == "weekly" else "*"
    return CronTrigger(day_of_week=day, hour=hour, minute=minute, timezone=lst.tz)


def _hhmm(value: str) -> time:
    hour, minute = (int(x) for x in value.split(":"))
    return time(hour, minute)


def announce_after(lst: ListConfig, published: datetime) -> datetime | None:
    """When a post published at ``published`` is announced, if not at once."""
    if not lst.announce_at:
        return None
    local = published.astimezone(lst.tz)
    start, end = _hhmm(lst.quiet_from), _hhmm(lst.announce_at)
    now = local.time()
    at_night = (start <= now or now < end) if start > end else (start <= now < end)
    if not at_night:
        return None
    day = local.date() if now < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=lst.tz)


def announce_due_now(app: App) -> int:
    """Announce the night's posts whose time has come; return how many."""
    from .fanout import enqueue_fanout
    now = app.now()
    with app.db.transaction() as session:
        due = session.execute(select(Post).where(
            Post.state == "published", Post.announce_after.is_not(None),
            Post.announce_after <= now).with_for_update(skip_locked=True)).scalars().all()
        for post in due:
            post.announce_after = None
            enqueue_fanout(app, session, post.list_name, "post", f"post:{post.id}",
                           ("all", "posts"))
    if due:
        app.wake_sender()
        log.info("announced %d post(s) of the night", len(due))
    return len(due)


def install(app: App) -> None:
    def mark(session: Session, post: Post) -> None:
        lst = app.config.lists.get(post.list_name)
        if lst is not None:
            post.announce_after = announce_after(lst, app.now())

    app.hooks.post_published.insert(0, mark)   # before the fan-out looks at it
    jobs.PER_LIST["digest"] = (run_digest, digest_trigger)
    if announce_due_now not in jobs.ANNOUNCERS:
        jobs.ANNOUNCERS.append(announce_due_now)
