"""Wiring the optional parts into an ``App``: fan-out, archive refresh, subscriptions.

Each part exposes ``install(app)``; this is the one place that lists them, so ``serve``,
the CLI and the tests build the same application.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

PARTS: list[str] = ["archive"]

PARTS += ["fanout", "subcommands", "bouncescore", "websubscribe"]  # outbound (issue 3)
PARTS += ["announce"]  # digests and batched announcements (issue 4)


def install(app: App) -> None:
    for name in PARTS:
        importlib.import_module(f"listserver.{name}").install(app)
