"""``serve`` on several cores: the parent binds the SMTP/LMTP sockets and forks receivers.

Python runs one thread at a time, so a server that receives, parses and publishes in one
process makes its SMTP sessions wait for the processing worker. Here the parent binds the
listening sockets, forks ``smtp.workers`` receiver processes that accept on them (the
kernel spreads connections between the processes) and only store and answer, and itself
runs processing, sending, the scheduler and HTTP. Receivers keep no state: everything is
in the database, so any of them may die at any time.

Each receiver asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so
``kill -9`` of the parent leaves no orphan accepting mail. SIGTERM to the parent is passed
on to the receivers, which finish the SMTP transactions in progress and exit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from .app import App
from .config import Config

log = logging.getLogger("listserver")

PR_SET_PDEATHSIG = 1


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def bind_all(config: Config) -> dict[str, socket.socket]:
    host = str(config.smtp["host"])
    sockets = {"smtp": bind(host, int(config.smtp["port"]))}
    if int(config.smtp["lmtp_port"]) >= 0:
        sockets["lmtp"] = bind(host, int(config.smtp["lmtp_port"]))
    return sockets


def die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the receiver polls instead
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def receiver_count(config: Config) -> int:
    workers = int(config.smtp["workers"])
    return workers if workers > 0 else (os.cpu_count() or 1)


def run(config: Config, make_app: Callable[[Config], App], roles: tuple[str, ...]) -> None:
    """Fork the receivers, run the other roles here, and stop everything together."""
    from .server import serve

    sockets = bind_all(config)
    count = receiver_count(config) if "receive" in roles else 0
    parent = os.getpid()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # a receiver
            die_with_parent(parent)
            os.close(wake_read)
            code = 0
            try:
                app = make_app(config)
                app.external_wake_fd = wake_write
                serve(app, ("receive",), sockets, announce=False)
            except BaseException:
                log.exception("receiver %d failed", index)
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    os.close(wake_write)
    own_roles = tuple(r for r in roles if r != "receive") if children else roles
    app = make_app(config)
    try:
        serve(app, own_roles, sockets, wake_fd=wake_read,
              ports={name: s.getsockname()[1] for name, s in sockets.items()})
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        app.close()
