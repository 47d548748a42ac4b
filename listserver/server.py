"""``listserver serve``: SMTP (and LMTP), HTTP, the processing worker and the sender in one
process and one asyncio loop.

``Server.start()`` binds everything and returns; ``Server.stop()`` stops taking new
connections, closes idle SMTP sessions with ``421``, lets the transactions in progress
finish (each gets its ``250``, then ``421``), then stops the workers. Queues are rows in the
database, so nothing is lost at a stop, clean or not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from .app import App
from .intake import GroupCommitter
from .sender import Sender
from .smtp import CLOSING, Handler, ListLMTP, ListSMTP
from .web import WebServer
from . import scheduler, worker

log = logging.getLogger("listserver")

ROLES = ("receive", "process", "send", "schedule", "http")


class Server:
    def __init__(self, app: App, roles: tuple[str, ...] = ROLES,
                 sockets: dict[str, socket.socket] | None = None, *, announce: bool = True,
                 ports: dict[str, int] | None = None, wake_fd: int | None = None) -> None:
        self.app = app
        self.roles = roles
        self.sockets = sockets or {}
        self.announce = announce
        self.ports = ports or {}
        self.wake_fd = wake_fd
        self.stop_event = asyncio.Event()
        self.smtp_port = 0
        self.lmtp_port = 0
        self.http_port = 0
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Strong references: a session that is not closed yet cannot be collected unclosed,
        # and ``stop`` closes every one of them. Ended sessions are pruned as new ones come.
        self._sessions: set[ListSMTP | ListLMTP] = set()
        self._handlers: list[Handler] = []
        self.web: WebServer | None = None
        self.committer: GroupCommitter | None = None
        self.extra_tasks: list[Callable[[App, asyncio.Event], Any]] = list(app.tasks)

    async def start(self) -> None:
        app = self.app
        loop = asyncio.get_running_loop()
        app.attach_loop(loop)
        await app.db.run_plain(app.db.migrate)
        config = app.config
        if "receive" in self.roles:
            self.committer = GroupCommitter(app.db, config.domain, app.wake_worker)
            limit = int(config.smtp["max_message_size"])
            handler = Handler(config, self.committer)
            self._handlers.append(handler)
            smtp = await loop.create_server(
                lambda: self._session(ListSMTP(handler, data_size_limit=limit,
                                               hostname=config.domain, ident="listserver")),
                **self._where("smtp", "port"))
            self._servers.append(smtp)
            self.smtp_port = smtp.sockets[0].getsockname()[1]
            if int(config.smtp["lmtp_port"]) >= 0:
                lmtp_handler = Handler(config, self.committer, lmtp=True)
                self._handlers.append(lmtp_handler)
                lmtp = await loop.create_server(
                    lambda: self._session(ListLMTP(lmtp_handler, data_size_limit=limit,
                                                   hostname=config.domain,
                                                   ident="listserver")),
                    **self._where("lmtp", "lmtp_port"))
                self._servers.append(lmtp)
                self.lmtp_port = lmtp.sockets[0].getsockname()[1]
        if self.wake_fd is not None:  # receivers in other processes poke this pipe
            loop.add_reader(self.wake_fd, self._poked)
        if "http" in self.roles:
            self.web = WebServer(app)
            self.web.start()
            self.http_port = self.web.port
        if "process" in self.roles:
            self._tasks.append(loop.create_task(worker.run(app, self.stop_event)))
        if "send" in self.roles:
            self._tasks.append(loop.create_task(Sender(app).run(self.stop_event)))
        if "schedule" in self.roles:
            self._tasks.append(loop.create_task(scheduler.run(app, self.stop_event)))
        # Plugins' background work (archive rendering) belongs with processing: receivers
        # forked by the supervisor run none of it.
        for factory in (self.extra_tasks if "process" in self.roles else []):
            self._tasks.append(loop.create_task(factory(app, self.stop_event)))  # type: ignore
        if self.announce:
            # Receivers forked by the supervisor listen on ``ports`` for this process.
            roles = [r for r in ROLES if r in self.roles or (r == "receive" and self.ports)]
            where = []
            if "receive" in roles:
                where.append(f"smtp {config.smtp['host']}:"
                             f"{self.ports.get('smtp', self.smtp_port)} lmtp "
                             f"{self.ports.get('lmtp', self.lmtp_port) or 'off'}")
            if "http" in roles:
                where.append(f"http {config.http['host']}:{self.http_port}")
            log.info("listserver serving: %s; roles %s; lists %s",
                     " ".join(where) or "no ports", " ".join(roles) or "(none)",
                     ", ".join(config.lists) or "(none)")

    def _session(self, protocol: ListSMTP | ListLMTP) -> ListSMTP | ListLMTP:
        if len(self._sessions) >= 64:
            self._sessions = {s for s in self._sessions
                              if s.session is None or s.transport is not None}
        self._sessions.add(protocol)
        return protocol

    def _poked(self) -> None:
        assert self.wake_fd is not None
        try:
            os.read(self.wake_fd, 4096)
        except BlockingIOError:
            pass
        self.app.wake_worker()

    def _where(self, name: str, port_key: str) -> dict[str, object]:
        if name in self.sockets:  # bound by the supervisor, shared with the other workers
            return {"sock": self.sockets[name]}
        return {"host": str(self.app.config.smtp["host"]),
                "port": int(self.app.config.smtp[port_key])}

    async def stop(self, grace: float = 10.0) -> None:
        await self._stop_accepting()
        for handler in self._handlers:
            handler.closing = True
        await self._end_sessions(grace)
        self.stop_event.set()
        self.app.wake_worker()
        self.app.wake_sender()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in self._tasks:
            task.cancel()
        if self.web is not None:
            await asyncio.to_thread(self.web.stop)
        for session in list(self._sessions):  # accepted during the shutdown itself
            transport = session.transport
            if transport is not None and not transport.is_closing():
                transport.close()
        if self.committer is not None:
            self.committer.close()

    async def _stop_accepting(self) -> None:
        """Close the listening sockets without stranding a connection accepted just before.

        asyncio's selector loop (Python 3.11) accepts a connection in one step and builds
        its transport in a task that runs next; if ``Server.close()`` comes in between, the
        build fails an assertion in ``Server._attach``, the error is swallowed, and the
        accepted socket is left, unclosed, to the garbage collector, with a session that
        never starts. So: stop accepting, let those tasks finish, then close. (uvloop,
        which ``serve`` uses, builds transports differently.)"""
        loop = asyncio.get_running_loop()
        if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            for srv in self._servers:
                for sock in srv.sockets:
                    loop.remove_reader(sock.fileno())
            for _ in range(3):
                await asyncio.sleep(0)
        for srv in self._servers:
            srv.close()

    async def _end_sessions(self, grace: float) -> None:
        """Close idle SMTP/LMTP sessions now, and the others once their transaction is done
        (at most ``grace`` seconds); a new transaction meanwhile gets ``421``.

        ``asyncio.Server.wait_closed`` does not wait for connections before Python 3.12, so
        a transaction in progress used to be cut off, and a client that caches connections
        (Postfix) would keep one open for ever."""
        loop = asyncio.get_running_loop()
        begun = loop.time()
        deadline = begun + grace
        closed: list[ListSMTP | ListLMTP] = []
        await asyncio.sleep(0.05)  # connections accepted just before the close get a session
        while True:
            busy, seen = [], False
            for session in list(self._sessions):
                if session.session is None:  # accepted, connection_made still to come
                    # (within a loop iteration or two; one that never starts is not
                    # waited for until the grace runs out)
                    seen = seen or loop.time() < begun + 1.0
                    continue
                transport = session.transport
                if transport is None or transport.is_closing():
                    continue
                seen = True
                envelope = session.envelope
                if envelope is not None and envelope.mail_from is not None:
                    busy.append(session)     # between MAIL FROM and the reply to DATA
                    continue
                transport.write(CLOSING)  # type: ignore[attr-defined]
                transport.close()
                closed.append(session)
            if not seen:
                break
            if loop.time() > deadline:
                if busy:
                    log.warning("%d SMTP transaction(s) still open after %.0fs; closing "
                                "them", len(busy), grace)
                for session in busy:
                    session.transport.close()  # type: ignore[union-attr]
                closed += busy
                break
            await asyncio.sleep(0.05)
        handlers = [t for t in (getattr(s, "_handler_coroutine", None) for s in closed) if t]
        if handlers:  # let the session tasks see their connection go
            await asyncio.wait(handlers, timeout=1)

    async def run_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("stopping: finishing SMTP transactions in progress")
        await self.stop()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    runner(main)


def serve(app: App, roles: tuple[str, ...] = ROLES,
          sockets: dict[str, socket.socket] | None = None, **options: Any) -> None:
    run_loop(Server(app, roles, sockets, **options).run_forever())
