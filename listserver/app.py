"""The application object: configuration, database, templates, clock and hooks in one place.

Build one with ``App(config)``; tests pass overrides (a clock, a DNS table for DKIM) rather
than patching globals (Flask's ``create_app`` pattern).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from sqlalchemy.orm import Session

from . import tokens
from .config import Config, ListConfig
from .db import Database
from .models import utcnow
from .publish import Hooks

if TYPE_CHECKING:
    from .rules import Context
    from .sender import Pending, Rendered

log = logging.getLogger("listserver")

BUILTIN_TEMPLATES = Path(__file__).parent / "templates"

# Renders an outbox row whose content is made at send time (fan-out mail); None: skip it.
Renderer = Callable[[Session, "Pending"], "Rendered | bytes | None"]


class App:
    def __init__(self, config: Config, *, clock: Callable[[], datetime] | None = None,
                 dns_txt: Callable[[bytes], bytes] | None = None) -> None:
        self.config = config
        self.db = Database(config.database_url)
        self.hooks = Hooks(clock=lambda: self.clock())
        self.clock = clock or utcnow
        self.dns_txt = dns_txt
        self.secret = config.site_secret()
        self.templates = jinja2.Environment(
            loader=jinja2.ChoiceLoader([
                jinja2.FileSystemLoader(str(config.root / "templates")),
                jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES)),
            ]),
            autoescape=jinja2.select_autoescape(["html", "xml"]),
            keep_trailing_newline=True,
            extensions=["jinja2.ext.i18n"],
        )
        self.templates.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
        self.renderers: dict[str, Renderer] = {}
        self.bounce_handlers: list[Callable[[Context], str]] = []
        # Background coroutines ``serve`` runs besides its own (plugins add them).
        self.tasks: list[Callable[[App, asyncio.Event], Coroutine[Any, Any, None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # In a receiver process: a pipe to the process that runs the worker.
        self.external_wake_fd: int | None = None
        self._wake: dict[str, asyncio.Event] = {}

    def now(self) -> datetime:
        return self.clock()

    def list(self, name: str) -> ListConfig:
        from .errors import ListserverError
        lst = self.config.lists.get(name)
        if lst is None:
            raise ListserverError(f"no list named {name!r} in the configuration")
        return lst

    def issue_token(self, session: Session, list_name: str, kind: str, *, address: str = "",
                    ref: str = "") -> str:
        ttl = tokens.days(int(self.config.site["confirm_days"]))
        return tokens.issue(session, self.secret, list_name, kind, address=address, ref=ref,
                            ttl=ttl, now=self.now())

    def bounce_handler(self, ctx: Context) -> str:
        from .bounces import analyse_bounce
        report = analyse_bounce(ctx.message.raw)
        notes = [f"failed: {', '.join(sorted(report.permanent)) or 'none found'}"]
        notes += [handler(ctx) for handler in self.bounce_handlers]
        return "; ".join(n for n in notes if n)

    def command_reply(self, ctx: Context, template: str, **values: Any) -> None:
        from . import notices
        if not ctx.parsed.from_address:
            return
        notices.send(self, ctx.session, ctx.lst, "command-reply", f"msg:{ctx.message.id}",
                     ctx.parsed.from_address, template, **values)
        self.wake_sender()

    # Waking the asyncio workers from any thread (no-ops outside ``serve``).
    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wake = {"worker": asyncio.Event(), "sender": asyncio.Event()}

    def wake_event(self, name: str) -> asyncio.Event:
        return self._wake[name]

    def _wake_up(self, name: str) -> None:
        if self._loop is None or name not in self._wake:
            return
        event = self._wake[name]
        try:
            if asyncio.get_running_loop() is self._loop:
                event.set()
                return
        except RuntimeError:
            pass
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(event.set)

    def wake_worker(self) -> None:
        if self.external_wake_fd is not None:
            try:
                os.write(self.external_wake_fd, b".")
            except (BlockingIOError, BrokenPipeError):
                pass  # already poked, or the worker's process is gone (it polls anyway)
        self._wake_up("worker")

    def wake_sender(self) -> None:
        self._wake_up("sender")

    def close(self) -> None:
        self.db.close()
