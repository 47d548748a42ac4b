"""The web archive: static HTML, feeds and mbox files, kept up to date as mail is published.

``install(app)`` (listed in ``plugins.PARTS``) wires it in:

* The publish hooks only *mark* a post dirty, inside the publishing transaction (in
  ``session.info``). When that transaction commits, the marks move to the archive's queue
  and wake its task; a rollback drops them. Nothing is rendered on the SMTP path.
* ``serve`` runs ``Archive.run``: it renders queued posts right after their commit (on
  its own thread, in short read transactions), rebuilds the search index a few seconds
  after the last change (debounced), and every ``POLL`` seconds catches up with changes
  made by other processes (``inject``, ``approve`` or ``import`` from the command line, a
  second server on PostgreSQL).
* Catching up is also how a crash is repaired: ``.listserver-state.json`` in the archive
  directory records when the archive was last known complete, and at start everything
  published since then (with a safety margin for transactions that were still open) is
  rendered again. Without a state file the first start renders everything.

The archive is derived data: ``listserver render --full`` rebuilds it from the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from ..models import Comment, Post, utcnow
from .files import TMP_BUILD, ArchiveFiles
from .render import ListRenderer
from .search import build_index

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("listserver.archive")

STATE_FILE = ".listserver-state.json"
POLL = 15.0                          # seconds between catch-up scans in serve
MARGIN = timedelta(minutes=10)       # longest a publishing transaction may stay open
RENDER_REST_AFTER = 0.05             # a render slower than this earns a rest of twice as long
RENDER_REST_MAX = 5.0
SEARCH_MAX_WAIT = 6                  # at most this many search delays under steady load

Changes = dict[tuple[str, int], bool]   # (list, post id) -> is a new post


class Archive:
    def __init__(self, app: App) -> None:
        self.app = app
        self.files = ArchiveFiles(app.config.archive_dir)
        self._renderers: dict[str, ListRenderer] = {}
        self._pending: Changes = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # (list, post id) -> comment count last rendered here (catching up skips those)
        self.rendered: dict[tuple[str, int], int] = {}
        self.search_dirty: set[str] = set()

    # ------------------------------------------------------------------ marking
    def mark(self, session: Session, list_name: str, post_id: int, new: bool) -> None:
        marks: Changes = session.info.setdefault("archive", {})
        marks[(list_name, post_id)] = marks.get((list_name, post_id), False) or new

    def after_commit(self, session: Session) -> None:
        marks: Changes | None = session.info.pop("archive", None)
        if not marks or self._loop is None:
            return  # not serving: `render` or the next start catches up from the state
        with self._lock:
            for key, new in marks.items():
                self._pending[key] = self._pending.get(key, False) or new
        wake = self._wake
        if wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(wake.set)

    def after_rollback(self, session: Session) -> None:
        session.info.pop("archive", None)

    def take_pending(self) -> Changes:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    # ------------------------------------------------------------------ rendering
    def renderer(self, list_name: str) -> ListRenderer | None:
        lst = self.app.config.lists.get(list_name)
        if lst is None:
            return None
        if list_name not in self._renderers:
            self._renderers[list_name] = ListRenderer(self.app, lst, self.files)
        return self._renderers[list_name]

    def render_changes(self, changes: Changes) -> int:
        """Render the given posts and what shows them; returns how many posts."""
        by_list: dict[str, tuple[set[int], set[int]]] = {}
        for (list_name, post_id), new in changes.items():
            changed, added = by_list.setdefault(list_name, (set(), set()))
            (added if new else changed).add(post_id)
        done = 0
        for list_name, (changed, added) in by_list.items():
            renderer = self.renderer(list_name)
            if renderer is None:
                continue
            if not self.files.exists(f"{list_name}/style.css"):
                renderer.render_static()
            for post_id, count in renderer.render_changed(changed, added).items():
                self.rendered[(list_name, post_id)] = count
                done += 1
            self.search_dirty.add(list_name)
        return done

    def render_full(self, lists: list[str] | None = None, workers: int = 1) -> int:
        """Rebuild every file of the given lists (default: all); returns the post count.

        ``workers`` > 1 renders in that many forked processes: only from a process that
        runs no other threads (``listserver render --full``), never from ``serve``."""
        started = utcnow()
        total = 0
        for name in lists or list(self.app.config.lists):
            renderer = self.renderer(name)
            if renderer is None:
                continue
            began = time.monotonic()
            if self.files.exists(name):
                count = renderer.render_all(workers)
            else:
                count = self._first_render(name, workers)
            log.info("rendered %s: %d posts in %.2fs", name, count, time.monotonic() - began)
            total += count
            self.search_dirty.add(name)
        self.files.sweep()
        if lists is None:
            self.save_state(started)
        return total

    def _first_render(self, name: str, workers: int) -> int:
        """A list's first render: built in a hidden directory, moved into place when whole.

        Nobody can see the files while they are written, so each is written once, in place
        (no temporary file and rename per file: on a busy disk, creating a directory entry
        is what a render of tens of thousands of files costs most)."""
        lst = self.app.config.lists[name]
        build = self.files.root / f"{TMP_BUILD}{os.getpid()}-{name}"
        shutil.rmtree(build, ignore_errors=True)
        try:
            count = ListRenderer(self.app, lst, ArchiveFiles(build, direct=True)
                                 ).render_all(workers)
            os.rename(build / name, self.files.root / name)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        return count

    def catch_up(self) -> int:
        """Render what was published since the archive was last known complete."""
        state = self.load_state()
        if state is None:
            return self.render_full()
        started = utcnow()
        since = state - MARGIN
        found = self.app.db.call(self._changed_since, since)
        changes = {key: new for key, (new, count) in found.items()
                   if self.rendered.get(key) != count}
        done = self.render_changes(changes) if changes else 0
        missing = [name for name in self.app.config.lists
                   if not self.files.exists(f"{name}/index.html")]
        if missing:
            done += self.render_full(missing)
        self.save_state(started)
        return done

    def _changed_since(self, session: Session, since: datetime) -> dict[
            tuple[str, int], tuple[bool, int]]:
        """(list, post id) -> (published since then, comment count) of what changed."""
        with_comments = select(Comment.post_id).where(Comment.published_at > since)
        rows = session.execute(select(Post.id, Post.list_name, Post.published_at,
                                      Post.comment_count).where(
            Post.state == "published",
            (Post.published_at > since) | Post.id.in_(with_comments)))
        return {(name, pk): (published is not None and published > since, count)
                for pk, name, published, count in rows}

    def build_search(self, lists: set[str] | None = None) -> None:
        if not self.app.config.archive["search"]:
            self.search_dirty.clear()
            return
        names = set(self.search_dirty) if lists is None else lists
        self.search_dirty -= names
        for name in sorted(names):
            lst = self.app.config.lists.get(name)
            if lst is not None:
                build_index(self.app.config.archive_dir / name, lst.language)

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Any:
        return self.app.config.archive_dir / STATE_FILE

    def load_state(self) -> datetime | None:
        try:
            data = json.loads(self.state_path.read_text())
            return datetime.fromisoformat(data["complete_as_of"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_state(self, as_of: datetime) -> None:
        self.files.write(STATE_FILE, json.dumps({"complete_as_of": as_of.isoformat()}) + "\n")

    # ------------------------------------------------------------------ serve
    async def run(self, app: App, stop: asyncio.Event) -> None:
        """serve's archive task: render after each commit, catch up, debounce the search."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive")
        self._wake = asyncio.Event()
        self._loop = loop
        delay = float(app.config.archive["search_delay"])
        search_due: float | None = None
        first_change: float | None = None

        async def work(fn: Any, *args: Any) -> int:
            try:
                return int(await loop.run_in_executor(executor, fn, *args) or 0)
            except Exception:
                log.exception("archive: %s failed; carrying on", getattr(fn, "__name__", fn))
                return 0

        try:
            await work(self.catch_up)
            if self.search_dirty or not self._search_ready():
                await work(self.build_search, set(app.config.lists))
            next_poll = loop.time() + POLL
            while not stop.is_set():
                deadline = next_poll if search_due is None else min(next_poll, search_due)
                await self._sleep(stop, max(0.0, deadline - loop.time()))
                self._wake.clear()
                if stop.is_set():
                    break
                done = 0
                pending = self.take_pending()
                if pending:
                    started = loop.time()
                    done += await work(self.render_changes, pending)
                    # Throttle: a post with thousands of comments takes long to render, and
                    # rendering it after every new comment would starve processing (same
                    # process). Rest twice as long as the render took; commits meanwhile
                    # collect in the pending set and are rendered together.
                    spent = loop.time() - started
                    if spent > RENDER_REST_AFTER:
                        try:  # commits do not cut this short; only a stop does
                            await asyncio.wait_for(stop.wait(), min(2 * spent, RENDER_REST_MAX))
                        except asyncio.TimeoutError:
                            pass
                if loop.time() >= next_poll:
                    done += await work(self.catch_up)
                    next_poll = loop.time() + POLL
                if done:  # debounce: some seconds after the last change, but not forever
                    now = loop.time()
                    first_change = now if first_change is None else first_change
                    search_due = min(now + delay, first_change + SEARCH_MAX_WAIT * delay)
                if search_due is not None and loop.time() >= search_due:
                    await work(self.build_search)
                    search_due = first_change = None
        finally:
            self._loop = None
            pending = self.take_pending()
            if pending:  # rendered now rather than at the next start
                await work(self.render_changes, pending)
            executor.shutdown(wait=True)

    async def _sleep(self, stop: asyncio.Event, timeout: float) -> None:
        """Until a commit wakes us, ``stop`` is set, or ``timeout`` seconds pass."""
        assert self._wake is not None
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _search_ready(self) -> bool:
        if not self.app.config.archive["search"]:
            return True
        return all((self.app.config.archive_dir / name / "pagefind" / "pagefind-entry.json")
                   .exists() for name in self.app.config.lists)


def install(app: App) -> None:
    archive = Archive(app)

    def post_published(session: Session, post: Post) -> None:
        archive.mark(session, post.list_name, post.id, True)

    def comment_published(session: Session, comment: Comment) -> None:
        archive.mark(session, comment.list_name, comment.post_id, False)

    app.hooks.post_published.append(post_published)
    app.hooks.comment_published.append(comment_published)
    event.listen(app.db.sessions, "after_commit", archive.after_commit)
    event.listen(app.db.sessions, "after_soft_rollback",
                 lambda session, _previous: archive.after_rollback(session))
    app.tasks.append(archive.run)
