"""The HTTP side of ``serve``: the static archive plus a few endpoints.

The archive is plain files and works from any web server; this one adds the endpoints
that need the database (``ROUTES``: subscribe form, one-click unsubscribe, confirmations,
health). It runs the standard library's threading HTTP server on its own thread: the
endpoints are short database calls, and a static file server needs nothing more.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.http")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    match: re.Match[str]
    form: dict[str, list[str]]
    headers: Any
    body: bytes = b""


Route = Callable[["App", Request], Response]
ROUTES: list[tuple[str, re.Pattern[str], Route]] = []


def route(method: str, pattern: str) -> Callable[[Route], Route]:
    def register(fn: Route) -> Route:
        ROUTES.append((method, re.compile(pattern + r"\Z"), fn))
        return fn
    return register


@route("GET", r"/health")
def health(app: App, request: Request) -> Response:
    from .status import status
    data = app.db.call(status, app)
    return Response(200, json.dumps(data, indent=1).encode(), "application/json")


def make_handler(app: App) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        server_version = "listserver"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(app.config.archive_dir), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _dispatch(self, method: str) -> bool:
            path = self.path.split("?", 1)[0]
            for route_method, pattern, fn in ROUTES:
                match = pattern.match(path)
                if match is None or route_method != method:
                    continue
                form: dict[str, list[str]] = {}
                body = b""
                if method == "POST":
                    length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
                    body = self.rfile.read(length)
                    form = parse_qs(body.decode("utf-8", "replace"))
                elif "?" in self.path:
                    form = parse_qs(self.path.split("?", 1)[1])
                try:
                    response = fn(app, Request(method, path, match, form, self.headers, body))
                except Exception:
                    log.exception("HTTP %s %s failed", method, path)
                    response = Response(500, b"Internal error\n", "text/plain")
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(response.body)
                return True
            return False

        def do_GET(self) -> None:
            if not self._dispatch("GET"):
                super().do_GET()

        def do_HEAD(self) -> None:
            if not self._dispatch("GET"):
                super().do_HEAD()

        def do_POST(self) -> None:
            if not self._dispatch("POST"):
                self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    return Handler


class WebServer:
    def __init__(self, app: App) -> None:
        app.config.archive_dir.mkdir(parents=True, exist_ok=True)
        self.httpd = ThreadingHTTPServer(
            (str(app.config.http["host"]), int(app.config.http["port"])), make_handler(app))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
