"""Rendering one list's archive: post pages with their comment threads, index pages,
month pages, feeds, per-thread mbox files, and a page and raw source per message.

Layout below ``archive/NAME/`` (pages link to each other relatively):

    index.html              the newest posts, the subscribe form
    page/N.html             posts by rank, N = 1 for the oldest posts: a new post only
                            ever changes the last page(s), never all of them
    months.html             every month with its number of posts
    month/YYYY-MM.html      the posts of a month (in the list's time zone)
    posts/SLUG.html         a post and its numbered, threaded comments
    posts/SLUG.{atom,json}  the comments of a post as a feed; posts/SLUG.mbox the thread
    feed.atom, feed.json    the newest posts
    msgid/ID/index.html     permanent link by Message-ID, redirecting to the message
    msgid/ID/raw.txt        the message as received
    style.css, search.js    the page style; the search box (Pagefind, the only script)

Data is read in short transactions and rendered outside them: a full render streams the
posts in chunks (flat memory whatever the size of the archive); an incremental render
reads one post with its comments and the few index pages that show it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from markupsafe import Markup
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from .. import urls
from ..addresses import list_address
from ..config import ListConfig
from ..i18n import Dates, environment
from ..mbox import write_message
from ..models import Comment, Message, Post
from .feeds import Feed, FeedEntry, json_feed
from .files import ArchiveFiles
from .views import Node, Privacy, reply_mailto, text_html, thread, walk

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("listserver.archive")

CHUNK = 100             # posts per read transaction in a full render
COMMENTS_IN_FEED = 50   # newest comments in a post's comments feed
STAND_IN = 918273645    # a comment number no real page shows (see _message_pages)


@dataclass
class Entry:
    """A post as an index page shows it."""

    title: str
    slug: str
    date: datetime
    author: str
    comments: int
    excerpt: str


class CommentView:
    """What a post page shows of one comment, made in Python: the template only prints it."""

    __slots__ = ("author", "iso", "short", "body", "quoted", "signature", "mailto",
                 "permalink")

    def __init__(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)


@dataclass
class Raw:
    raw: bytes
    sender: str
    received: datetime


@dataclass
class Thread:
    """What a post page needs, read in one transaction."""

    post: Post
    comments: list[Comment]
    raws: dict[int, Raw] = field(default_factory=dict)


def published(list_name: str) -> Any:
    return and_(Post.list_name == list_name, Post.state == "published")


def month_key(value: datetime, lst: ListConfig) -> str:
    return value.astimezone(lst.tz).strftime("%Y-%m")


def month_range(key: str, lst: ListConfig) -> tuple[datetime, datetime]:
    year, month = (int(x) for x in key.split("-"))
    start = datetime(year, month, 1, tzinfo=lst.tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=lst.tz)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def msgid_href(prefix: str, message_id: str) -> str:
    """Relative link to a message's redirect directory (its ``%`` encoded for the URL)."""
    return f"{prefix}msgid/{urls.msgid_segment(message_id).replace('%', '%25')}/"


class ListRenderer:
    def __init__(self, app: App, lst: ListConfig, files: ArchiveFiles | None = None) -> None:
        self.app = app
        self.config = app.config
        self.lst = lst
        self.files = files or ArchiveFiles(app.config.archive_dir)
        self.env = environment(app.templates.loader, lst.language)  # type: ignore[arg-type]
        self.dates = Dates(lst)
        self.privacy = Privacy(bool(self.config.archive["show_addresses"]))
        self.per_page = int(self.config.archive["posts_per_page"])
        self.max_depth = int(self.config.archive["max_depth"])
        self.search = bool(self.config.archive["search"])
        self.name = lst.name
        self.list_url = urls.list_url(self.config, self.name)
        # Templates chosen for the current render (list override or site or built-in);
        # emptied when a render starts, so an edited template counts from the next one.
        self._templates: dict[str, Any] = {}

    # ------------------------------------------------------------------ templates
    def template(self, name: str) -> Any:
        tmpl = self._templates.get(name)
        if tmpl is None:
            tmpl = self._templates[name] = self.env.select_template(
                [f"archive/{self.name}/{name}", f"archive/{name}"])
        return tmpl

    def render(self, template: str, root: str, **values: Any) -> str:
        return self.template(template).render(  # type: ignore[no-any-return]
            lst=self.lst, root=root, dates=self.dates, search=self.search,
            list_url=self.list_url, **values)

    def write(self, relative: str, data: str | bytes) -> None:
        self.files.write(f"{self.name}/{relative}", data)

    # ------------------------------------------------------------------ reading
    def read_threads(self, session: Session, posts: list[Post]) -> list[Thread]:
        """Posts with their comments and raw messages: three queries for the lot."""
        ids = [p.id for p in posts]
        comments: dict[int, list[Comment]] = {i: [] for i in ids}
        if ids:
            for c in session.execute(select(Comment).where(Comment.post_id.in_(ids))
                                     .order_by(Comment.post_id, Comment.number)).scalars():
                comments[c.post_id].append(c)
        threads = [Thread(p, comments[p.id]) for p in posts]
        pks = [pk for t in threads for pk in [t.post.message_pk, *(c.message_pk for c in
                                                                   t.comments)] if pk]
        raws: dict[int, Raw] = {}
        for start in range(0, len(pks), 1000):
            rows = session.execute(select(
                Message.id, Message.raw, Message.envelope_from, Message.from_address,
                Message.received_at).where(Message.id.in_(pks[start:start + 1000])))
            for pk, raw, env_from, from_address, received in rows:
                raws[pk] = Raw(raw, env_from or from_address or "", received)
        for t in threads:
            t.raws = {pk: raws[pk] for pk in [t.post.message_pk,
                                              *(c.message_pk for c in t.comments)]
                      if pk in raws}
        return threads

    def entry(self, post: Post) -> Entry:
        text = " ".join(self.privacy.text(post.text).split())
        excerpt = text if len(text) <= 240 else text[:240].rsplit(" ", 1)[0] + " …"
        return Entry(post.title, post.slug, post.date,
                     self.privacy.author(post.author_name, post.author_address),
                     post.comment_count, excerpt)

    # ------------------------------------------------------------------ a post
    def post_body(self, post: Post) -> Markup:
        if post.html:
            return self.privacy.html(post.html)
        return text_html(self.privacy.text(post.text))

    def comment_body(self, c: Comment) -> Markup:
        if c.html and not c.quoted:
            return self.privacy.html(c.html)
        return text_html(self.privacy.text(c.text))

    def render_thread(self, t: Thread, *, all_messages: bool = True) -> None:
        """The post page, its comment feeds, its mbox; a page and raw source per message.

        ``all_messages=False`` (incremental) writes message pages only where missing:
        they never change, since a comment keeps its post and its number forever.
        """
        post, config = t.post, self.config
        reply_to_post = list_address(config, self.name, "reply", post.thread_token)
        subject = post.title

        def mailto(c: Comment | None) -> str:
            if c is None:
                return reply_mailto(reply_to_post, post.message_id, subject)
            to = list_address(config, self.name, "reply", c.thread_token)
            return reply_mailto(to, c.message_id, subject)

        # Each comment's body and author, made once for the page and the feeds.
        bodies: dict[int, Markup] = {}
        authors: dict[int, str] = {}

        def comment_body(c: Comment) -> Markup:
            body = bodies.get(c.id)
            if body is None:
                body = bodies[c.id] = self.comment_body(c)
            return body

        def author_of(c: Comment) -> str:
            name = authors.get(c.id)
            if name is None:
                name = authors[c.id] = self.privacy.author(c.author_name, c.author_address)
            return name

        nodes: list[Node] = thread(t.comments, self.max_depth)
        privacy, dates = self.privacy, self.dates
        for node in walk(nodes):
            c = node.comment
            node.view = CommentView(
                author=author_of(c), iso=dates.iso(c.date), short=dates.short(c.date),
                body=comment_body(c),
                quoted=text_html(privacy.text(c.quoted)) if c.quoted else "",
                signature=text_html(privacy.text(c.signature)) if c.signature else "",
                mailto=mailto(c), permalink=msgid_href("../", c.message_id))
        page = self.render(
            "post.html", "../", post=post, nodes=nodes, body=self.post_body(post),
            author=self.privacy.author(post.author_name, post.author_address),
            comment_body=comment_body, text_html=text_html, privacy=self.privacy,
            author_of=author_of, mailto=mailto, msgid_href=lambda mid: msgid_href("../", mid),
            url=urls.post_url(config, self.name, post.slug))
        self.write(f"posts/{post.slug}.html", page)
        self.render_comment_feeds(t, comment_body, author_of)
        mbox = bytearray()
        page_of = self._message_pages(post)
        for pk, message_id, number in [(post.message_pk, post.message_id, None),
                                       *((c.message_pk, c.message_id, c.number)
                                         for c in t.comments)]:
            raw = t.raws.get(pk) if pk else None
            if raw is not None:
                mbox += self._mbox_entry(raw)
            folder = urls.msgid_segment(message_id)
            if not all_messages and self.files.exists(f"{self.name}/msgid/{folder}/index.html"):
                continue
            self.write(f"msgid/{folder}/index.html", page_of(number, raw is not None))
            if raw is not None:
                self.write(f"msgid/{folder}/raw.txt", raw.raw)
        self.write(f"posts/{post.slug}.mbox", bytes(mbox))

    def _message_pages(self, post: Post) -> Any:
        """``page(number, has_raw)``: the redirect page of the post (None) or a comment.

        A post's comments' pages differ only in the comment number, so the template is
        rendered once with a stand-in number, which each page then replaces; the first
        comment's page is also rendered for real and must come out the same (else, say
        with a template that formats the number, every page is rendered for real).
        """
        url = urls.post_url(self.config, self.name, post.slug)
        target = f"../../posts/{post.slug}.html"
        stencil: list[str | None] = []

        def real(number: int | None, has_raw: bool) -> str:
            anchor = f"#c{number}" if number else ""
            return self.render("message.html", "../../", target=target + anchor,
                               title=post.title, number=number, has_raw=has_raw,
                               url=url + anchor)

        def page(number: int | None, has_raw: bool) -> str:
            if number is None or not has_raw:
                return real(number, has_raw)
            if not stencil:
                made = real(number, True)
                shape = real(STAND_IN, True)
                ok = shape.replace(str(STAND_IN), str(number)) == made
                stencil.append(shape if ok else None)
                return made
            shape = stencil[0]
            if shape is None:
                return real(number, True)
            return shape.replace(str(STAND_IN), str(number))
        return page

    @staticmethod
    def _mbox_entry(raw: Raw) -> bytes:
        import io
        buf = io.BytesIO()
        write_message(buf, raw.raw, raw.sender, raw.received)
        return buf.getvalue()

    def render_comment_feeds(self, t: Thread, body: Any = None, author: Any = None) -> None:
        post, config = t.post, self.config
        body = body or self.comment_body
        author = author or (lambda c: self.privacy.author(c.author_name, c.author_address))
        newest = sorted(t.comments, key=lambda c: c.number, reverse=True)[:COMMENTS_IN_FEED]
        entries = []
        for c in newest:
            url = urls.comment_url(config, self.name, post.slug, c.number)
            entries.append(FeedEntry(
                id=url, url=url, title=f"#{c.number} {author(c)}", published=c.date,
                author=author(c), email=c.author_address if self.privacy.show else "",
                content=str(body(c))))
        updated = max([post.date, *(c.date for c in newest)])
        feed = Feed(
            id=urls.comments_feed_url(config, self.name, post.slug), title=post.title,
            subtitle=self.lst.title, language=self.lst.language,
            home_url=urls.post_url(config, self.name, post.slug),
            atom_url=urls.comments_feed_url(config, self.name, post.slug, "atom"),
            json_url=urls.comments_feed_url(config, self.name, post.slug, "json"),
            updated=updated, entries=entries)
        self.write(f"posts/{post.slug}.atom", self.render("feed.atom.xml", "../", feed=feed,
                                                          comments_of=post.title))
        self.write(f"posts/{post.slug}.json", json_feed(feed, self.dates.iso))

    # ------------------------------------------------------------------ index pages
    def render_page(self, number: int, pages: int, posts: list[Post]) -> None:
        """``page/N.html``: bucket N (1 = oldest) of ``per_page`` posts, newest first."""
        older = f"{number - 1}.html" if number > 1 else None
        newer = f"{number + 1}.html" if number < pages else "../index.html"
        self.write(f"page/{number}.html", self.render(
            "index.html", "../", kind="page", number=number,
            entries=[self.entry(p) for p in reversed(posts)], older=older, newer=newer))

    def render_index(self, newest: list[Post], total: int) -> None:
        """``index.html`` and the feeds of posts: the newest ``per_page`` posts."""
        pages = self.pages(total)
        older = None
        if total > len(newest):  # the page that holds the first post not shown here
            older = f"page/{(total - len(newest) - 1) // self.per_page + 1}.html"
        self.write("index.html", self.render(
            "index.html", "", kind="index", entries=[self.entry(p) for p in newest],
            older=older, newer=None, pages=pages, total=total,
            subscribe_url=urls.subscribe_url(self.config, self.name),
            subscribe_address=list_address(self.config, self.name, "subscribe")))
        self.render_posts_feeds(newest)

    def render_posts_feeds(self, newest: list[Post]) -> None:
        config = self.config
        entries = [FeedEntry(
            id=urls.post_url(config, self.name, p.slug),
            url=urls.post_url(config, self.name, p.slug), title=p.title, published=p.date,
            author=self.privacy.author(p.author_name, p.author_address),
            email=p.author_address if self.privacy.show else "", content=str(self.post_body(p)),
            replies_url=urls.comments_feed_url(config, self.name, p.slug),
            replies=p.comment_count) for p in newest]
        feed = Feed(
            id=urls.list_url(config, self.name), title=self.lst.title,
            subtitle=self.lst.description, language=self.lst.language,
            home_url=urls.list_url(config, self.name),
            atom_url=urls.feed_url(config, self.name, "atom"),
            json_url=urls.feed_url(config, self.name, "json"),
            updated=max((e.published for e in entries), default=datetime(
                2000, 1, 1, tzinfo=timezone.utc)), entries=entries)
        self.write("feed.atom", self.render("feed.atom.xml", "", feed=feed, comments_of=None))
        self.write("feed.json", json_feed(feed, self.dates.iso))

    def render_month(self, key: str, posts: list[Post]) -> None:
        first = month_range(key, self.lst)[0]
        self.write(f"month/{key}.html", self.render(
            "index.html", "../", kind="month", month=self.dates.month(first + timedelta(
                hours=12)), entries=[self.entry(p) for p in sorted(
                    posts, key=lambda p: (p.date, p.id), reverse=True)],
            older=None, newer=None))

    def render_months(self, counts: dict[str, int]) -> None:
        months = [(key, self.dates.month(month_range(key, self.lst)[0] + timedelta(hours=12)),
                   n) for key, n in sorted(counts.items(), reverse=True)]
        self.write("months.html", self.render("months.html", "", months=months))

    def render_static(self) -> None:
        self.write("style.css", self.render("style.css", ""))
        self.write("search.js", self.render("search.js", ""))

    def pages(self, total: int) -> int:
        return max(1, -(-total // self.per_page))

    # ------------------------------------------------------------------ full render
    def _next_posts(self, session: Session, last: tuple[datetime, int] | None) -> list[Post]:
        """The next ``CHUNK`` published posts after ``last`` (date, id), oldest first: keyset
        pagination, so every chunk costs the same however deep into the archive."""
        query = select(Post).where(published(self.name))
        if last is not None:
            query = query.where(or_(Post.date > last[0],
                                    and_(Post.date == last[0], Post.id > last[1])))
        return list(session.execute(query.order_by(Post.date, Post.id).limit(CHUNK)).scalars())

    def iter_posts(self) -> Iterator[list[Post]]:
        """The published posts oldest first, ``CHUNK`` at a time."""
        last: tuple[datetime, int] | None = None
        while posts := self.app.db.call(self._next_posts, last):
            yield posts
            last = (posts[-1].date, posts[-1].id)

    def iter_chunks(self) -> Iterator[list[Thread]]:
        """The published posts oldest first with their comments, ``CHUNK`` at a time (each
        chunk's posts and comments read in one transaction)."""
        last: tuple[datetime, int] | None = None
        while threads := self.app.db.call(
                lambda session: self.read_threads(session, self._next_posts(session, last))):
            yield threads
            last = (threads[-1].post.date, threads[-1].post.id)

    def render_ids(self, ids: list[int]) -> int:
        """Render the threads of the given posts; returns how many files that wrote."""
        before = self.files.written

        def read(session: Session) -> list[Thread]:
            posts = list(session.execute(select(Post).where(
                Post.id.in_(ids), published(self.name))).scalars())
            return self.read_threads(session, posts)
        for t in self.app.db.call(read):
            self.render_thread(t)
        return self.files.written - before

    def render_all(self, workers: int = 1) -> int:
        """Every file of the list, streaming the posts oldest first. Returns the post count.

        With ``workers`` > 1 the threads (a post page, its feeds and mbox, a page and the
        source of each message: nearly all the work) are rendered by that many forked
        processes, a chunk of posts each at a time, while this one writes the index and
        month pages. Only from a process without other threads (``render --full``): a
        fork copies one thread only.
        """
        self._templates.clear()
        self.render_static()
        total = 0
        bucket: list[Post] = []
        month: tuple[str, list[Post]] | None = None
        counts: dict[str, int] = {}
        newest: list[Post] = []
        number = 0
        pages_total = self.pages(self.app.db.call(lambda s: s.execute(
            select(func.count()).select_from(Post).where(published(self.name))).scalar_one()))
        pool = _start_pool(self, workers) if workers > 1 and pages_total * self.per_page > \
            CHUNK else None
        jobs: list[Any] = []
        try:
            chunks: Iterator[list[Post]]
            if pool is None:
                chunks = ([t.post for t in self._rendered(threads)] for threads in
                          self.iter_chunks())
            else:
                chunks = self.iter_posts()
            for posts in chunks:
                if pool is not None:
                    jobs.append(pool.apply_async(_render_ids, ([p.id for p in posts],)))
                for post in posts:
                    total += 1
                    bucket.append(post)
                    if len(bucket) == self.per_page:
                        number += 1
                        self.render_page(number, max(pages_total, number), bucket)
                        bucket = []
                    key = month_key(post.date, self.lst)
                    counts[key] = counts.get(key, 0) + 1
                    if month is None or month[0] != key:
                        if month is not None:
                            self.render_month(*month)
                        month = (key, [])
                    month[1].append(post)
                    newest = (newest + [post])[-self.per_page:]
            if bucket or number == 0:
                number += 1
                self.render_page(number, number, bucket)
            if month is not None:
                self.render_month(*month)
            self.render_months(counts)
            self.render_index(list(reversed(newest)), total)
            for job in jobs:
                self.files.written += job.get()
            if pool is not None:
                pool.close()
                pool.join()
        finally:
            if pool is not None:
                pool.terminate()
        return total

    def _rendered(self, threads: list[Thread]) -> list[Thread]:
        for t in threads:
            self.render_thread(t)
        return threads

    # ------------------------------------------------------------------ incremental
    def render_changed(self, changed: Iterable[int], new: Iterable[int] = ()) -> dict[int, int]:
        """Re-render what shows the given posts; ``new`` ones also shift pages and months.

        Returns the comment count rendered for each post. Reads everything in one short
        transaction: the posts with their comments, their ranks, and the posts of each
        index page that shows one of them.
        """
        changed_ids, new_ids = set(changed) | set(new), set(new)
        if not changed_ids:
            return {}
        self._templates.clear()
        data = self.app.db.call(self._read_changed, changed_ids, new_ids)
        threads, total, pages, months, newest, counts = data
        for t in threads:
            self.render_thread(t, all_messages=False)
        for number, posts in sorted(pages.items()):
            self.render_page(number, self.pages(total), posts)
        for key, posts in months.items():
            self.render_month(key, posts)
        if counts is not None:
            self.render_months(counts)
        if newest is not None:
            self.render_index(newest, total)
        return {t.post.id: t.post.comment_count for t in threads}

    def _read_changed(self, session: Session, ids: set[int], new_ids: set[int]) -> tuple[
            list[Thread], int, dict[int, list[Post]], dict[str, list[Post]],
            list[Post] | None, dict[str, int] | None]:
        posts = list(session.execute(select(Post).where(
            Post.id.in_(ids), published(self.name))).scalars())
        threads = self.read_threads(session, posts)
        total = session.execute(select(func.count()).select_from(Post).where(
            published(self.name))).scalar_one()
        page_count = self.pages(total)
        numbers: set[int] = set()
        index = bool(new_ids)
        for post in posts:  # two ranges of the (list, state, date, id) index
            rank = session.execute(select(func.count()).select_from(Post).where(
                published(self.name), Post.date < post.date)).scalar_one() + \
                session.execute(select(func.count()).select_from(Post).where(
                    published(self.name), Post.date == post.date, Post.id < post.id)
                ).scalar_one()
            number = rank // self.per_page + 1
            numbers.add(number)
            if post.id in new_ids:  # everything after it moved by one
                numbers.update(range(max(1, number - 1), page_count + 1))
            if rank >= total - self.per_page:
                index = True
        pages: dict[int, list[Post]] = {}
        for number in numbers:
            pages[number] = list(session.execute(
                select(Post).where(published(self.name)).order_by(Post.date, Post.id)
                .offset((number - 1) * self.per_page).limit(self.per_page)).scalars())
        months: dict[str, list[Post]] = {}
        for key in {month_key(p.date, self.lst) for p in posts}:
            start, end = month_range(key, self.lst)
            months[key] = list(session.execute(select(Post).where(
                published(self.name), Post.date >= start, Post.date < end)).scalars())
        newest = None
        if index:
            newest = list(session.execute(select(Post).where(published(self.name)).order_by(
                Post.date.desc(), Post.id.desc()).limit(self.per_page)).scalars())
        counts = None
        if new_ids:
            counts = {}
            key, end = "", None   # month_key only when a date passes the month's end
            for (date,) in session.execute(select(Post.date).where(
                    published(self.name)).order_by(Post.date)):
                if end is None or date >= end:
                    key = month_key(date, self.lst)
                    end = month_range(key, self.lst)[1]
                counts[key] = counts.get(key, 0) + 1
        return threads, total, pages, months, newest, counts


# ---------------------------------------------------------------------- parallel full render
_FORKED: ListRenderer | None = None   # the renderer the worker processes inherit


def _start_pool(renderer: ListRenderer, workers: int) -> Any:
    import multiprocessing
    global _FORKED
    _FORKED = renderer
    return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_started)


def _worker_started() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    assert _FORKED is not None
    _FORKED.app.db.engine.dispose(close=False)  # the parent's connections stay its own


def _render_ids(ids: list[int]) -> int:
    assert _FORKED is not None
    return _FORKED.render_ids(ids)
