"""The ``listserver`` command line (the contract in DESIGN.md).

Exit status: 0 done, 1 failed, 2 bad usage or bad configuration. Errors are one line on
stderr; set LISTSERVER_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import MODES, load_config
from .errors import ConfigError, ListserverError

DEFAULT_CONFIG = Path(__file__).parent / "default_config.toml"
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_").replace("_", "-")] = fn
    return fn


class UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        raise ConfigError(f"usage: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="listserver", description="A blog whose posts, comments and "
                    "newsletter all travel by email.")
    p.add_argument("--config", help="config file (default: $LISTSERVER_CONFIG or ./config.toml)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=UsageParser)
    sub.add_parser("init", help="write a working config.toml and create the database")
    s = sub.add_parser("serve", help="SMTP + HTTP + workers in one process")
    s.add_argument("--role", action="append", choices=("receive", "process", "send",
                   "schedule", "http"), help="run only these parts (repeatable; default all)")
    s = sub.add_parser("inject", help="process a raw message as if received")
    s.add_argument("list")
    s.add_argument("file", nargs="?", default="-")
    s.add_argument("--to", help="envelope recipient (default: the list's post address)")
    s.add_argument("--from", dest="sender",
                   help="envelope sender (default: the From address; '' for a bounce)")
    s = sub.add_parser("subscribe", help="add a subscriber")
    s.add_argument("list")
    s.add_argument("address")
    s.add_argument("--name", default="")
    s.add_argument("--mode", choices=MODES)
    s.add_argument("--no-confirm", action="store_true")
    s = sub.add_parser("unsubscribe", help="remove a subscriber")
    s.add_argument("list")
    s.add_argument("address")
    s = sub.add_parser("members", help="list subscribers")
    s.add_argument("list")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("held", help="list held messages")
    s.add_argument("list")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("approve", help="publish a held message")
    s.add_argument("id", type=int)
    s = sub.add_parser("reject", help="refuse a held message")
    s.add_argument("id", type=int)
    s.add_argument("--reason", default="")
    sub.add_parser("retry", help="queue failed (parked) messages again").add_argument(
        "list", nargs="?")
    sub.add_parser("deliver", help="drain the outbox once, then exit")
    s = sub.add_parser("digest", help="send due digests")
    s.add_argument("list")
    s.add_argument("--now", action="store_true")
    sub.add_parser("render", help="render the archive").add_argument("--full",
                                                                      action="store_true")
    s = sub.add_parser("import", help="bring in an existing archive")
    s.add_argument("list")
    s.add_argument("mbox")
    s = sub.add_parser("export", help="write the list out")
    s.add_argument("list")
    s.add_argument("--format", choices=("json", "mbox"), default="json")
    s = sub.add_parser("status", help="queue depths and the age of the oldest unsent mail")
    s.add_argument("--json", action="store_true")
    return p


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("LISTSERVER_CONFIG") or "config.toml")


def make_app(args: argparse.Namespace, migrate: bool = True) -> Any:
    from .app import App
    from .plugins import install
    app = App(load_config(config_path(args)))
    install(app)
    if migrate:
        app.db.migrate()
    return app


@command
def cmd_init(args: argparse.Namespace) -> int:
    path = config_path(args)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")
        print(f"wrote {path}")
    app = make_app(args)
    app.config.archive_dir.mkdir(parents=True, exist_ok=True)
    print(f"database ready: {app.config.database_url}")
    app.close()
    return 0


@command
def cmd_serve(args: argparse.Namespace) -> int:
    from .app import App
    from .plugins import install
    from .server import ROLES, serve
    from .supervisor import receiver_count, run
    logging.getLogger("listserver").setLevel(logging.INFO)
    app = make_app(args)  # validates the config and applies migrations
    roles = tuple(args.role) if args.role else ROLES
    if "receive" not in roles or receiver_count(app.config) <= 1:
        try:
            serve(app, roles)
        finally:
            app.close()
        return 0
    config = app.config
    app.close()  # no database connection or thread may cross the fork

    def build(cfg: Any) -> App:
        new = App(cfg)
        install(new)
        return new
    run(config, build, roles)
    return 0


@command
def cmd_inject(args: argparse.Namespace) -> int:
    from .addresses import list_address
    from .intake import Incoming, store_incoming
    from .models import Message
    from .process import process_id
    from .worker import drain
    app = make_app(args)
    lst = app.list(args.list)
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    to = args.to or list_address(app.config, lst.name)
    sender = args.sender
    if sender is None:  # like `sendmail -t`: the envelope sender is the From address
        from .parse import parse_message
        sender = parse_message(raw).from_address
    [pk] = app.db.call(store_incoming, [Incoming(lst.name, raw, sender, [to], "inject")],
                       app.config.domain)
    process_id(app, pk)
    drain(app)
    message = app.db.call(lambda s: s.get(Message, pk))
    print(f"message {pk} {message.message_id}: {message.outcome or message.state}"
          f"{' (' + message.reason + ')' if message.reason else ''}")
    app.close()
    return 1 if message.state == "failed" else 0


def _held_row(m: Any) -> dict[str, Any]:
    return {"id": m.id, "message_id": m.message_id, "from": m.from_address,
            "subject": m.subject, "reason": m.reason, "hint": m.hint,
            "received": m.received_at.isoformat()}


@command
def cmd_held(args: argparse.Namespace) -> int:
    from .moderation import held
    app = make_app(args)
    app.list(args.list)
    rows = app.db.call(lambda s: [_held_row(m) for m in held(s, args.list)])
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for r in rows:
            hint = f"\n      hint: {r['hint']}" if r["hint"] else ""
            print(f"{r['id']:>6}  {r['from']}  {r['subject']!r}\n      reason: {r['reason']}"
                  f"{hint}")
        if not rows:
            print("no held messages")
    app.close()
    return 0


@command
def cmd_approve(args: argparse.Namespace) -> int:
    from .models import Message
    from .moderation import approve
    from .process import process_id
    from .worker import drain
    app = make_app(args)
    app.db.call(approve, args.id)
    process_id(app, args.id)
    drain(app)
    message = app.db.call(lambda s: s.get(Message, args.id))
    print(f"message {args.id}: {message.outcome or message.state}")
    app.close()
    return 0 if message.state == "done" else 1


@command
def cmd_reject(args: argparse.Namespace) -> int:
    from .moderation import reject
    app = make_app(args)
    app.db.call(reject, args.id, args.reason)
    print(f"message {args.id}: rejected")
    app.close()
    return 0


@command
def cmd_subscribe(args: argparse.Namespace) -> int:
    from .subscriptions import request_subscription, subscribe_now, valid_address
    if not valid_address(args.address):
        raise ListserverError(f"{args.address!r} is not an email address")
    app = make_app(args)
    try:
        lst = app.list(args.list)
        action = subscribe_now if args.no_confirm else request_subscription
        outcome, sub = app.db.call(lambda s: action(app, s, lst, args.address, args.name,
                                                    args.mode))
    finally:
        app.close()
    print({
        "subscribed": f"{sub.address} subscribed to {lst.name} (mode {sub.mode})",
        "already": f"{sub.address} is already subscribed to {lst.name} (mode {sub.mode})",
        "mode-set": f"{sub.address} is already subscribed to {lst.name}; mode now {sub.mode}",
        "sent": f"confirmation mail queued for {sub.address}; the subscription starts when "
                "it is confirmed",
        "throttled": f"a confirmation was mailed to {sub.address} minutes ago; not sending "
                     "another",
    }[outcome])
    return 0


@command
def cmd_unsubscribe(args: argparse.Namespace) -> int:
    from .subscriptions import find, unsubscribe
    app = make_app(args)

    def run(session: Any) -> bool:
        sub = find(session, args.list, args.address)
        return sub is not None and unsubscribe(app, session, sub)
    try:
        app.list(args.list)
        done = app.db.call(run)
    finally:
        app.close()
    print(f"{args.address.lower()} {'unsubscribed from' if done else 'is not subscribed to'} "
          f"{args.list}")
    return 0


@command
def cmd_members(args: argparse.Namespace) -> int:
    from .subscriptions import members
    app = make_app(args)
    try:
        app.list(args.list)
        rows = app.db.call(lambda s: [{
            "address": m.address, "name": m.name, "mode": m.mode, "state": m.state,
            "bounce_score": m.bounce_score,
            "confirmed": m.confirmed_at.isoformat() if m.confirmed_at else None}
            for m in members(s, args.list)])
    finally:
        app.close()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for r in rows:
            name = f"  {r['name']}" if r["name"] else ""
            state = "" if r["state"] == "active" else f"  ({r['state']})"
            print(f"{r['address']}  {r['mode']}{state}{name}")
        print(f"{sum(r['state'] == 'active' for r in rows)} active of {len(rows)}",
              file=sys.stderr)
    return 0


@command
def cmd_retry(args: argparse.Namespace) -> int:
    from .moderation import retry_failed
    from .worker import drain
    app = make_app(args)
    count = app.db.call(retry_failed, args.list)
    drain(app)
    print(f"{count} parked message(s) queued again")
    app.close()
    return 0


@command
def cmd_deliver(args: argparse.Namespace) -> int:
    import asyncio
    from .sender import Sender
    app = make_app(args)
    try:
        import uvloop  # as serve: a faster event loop where there is one
        run: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        run = asyncio.run
    count = run(Sender(app).deliver())
    print(f"{count} mail(s) tried")
    app.close()
    return 0


@command
def cmd_digest(args: argparse.Namespace) -> int:
    from .announce import digest_trigger
    from .digest import pending, run_digest
    app = make_app(args)
    lst = app.list(args.list)
    if args.now:
        count = run_digest(app, lst.name)
        import asyncio
        from .sender import Sender
        asyncio.run(Sender(app).deliver())
        print(f"{count} digest(s) sent")
    else:
        waiting = list(pending(app, lst.name))
        nxt = digest_trigger(lst).get_next_fire_time(None, app.now())
        print(f"next digest: {nxt.isoformat() if nxt else 'never'}; "
              f"{len(waiting)} subscriber(s) with new items (use --now to send them now)")
    app.close()
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from .export import write_json, write_mbox
    app = make_app(args)
    lst = app.list(args.list)
    if args.format == "json":
        app.db.call(write_json, app.config, lst, sys.stdout)
    else:
        app.db.call(write_mbox, lst, sys.stdout.buffer)
    app.close()
    return 0


@command
def cmd_render(args: argparse.Namespace) -> int:
    import time
    from .archive import Archive
    app = make_app(args)
    archive = Archive(app)
    started = time.monotonic()
    # A full render uses every core (forked workers: this process runs no other thread).
    count = archive.render_full(workers=os.cpu_count() or 1) if args.full \
        else archive.catch_up()
    rendered = time.monotonic() - started
    archive.build_search(set(app.config.lists) if args.full else None)
    print(f"rendered {count} post(s) in {rendered:.1f}s into {app.config.archive_dir}"
          f" (search index: {time.monotonic() - started - rendered:.1f}s)")
    app.close()
    return 0


@command
def cmd_import(args: argparse.Namespace) -> int:
    from .importer import import_mbox
    app = make_app(args)
    lst = app.list(args.list)
    path = Path(args.mbox)
    if not path.is_file():
        raise ListserverError(f"{path}: no such file")
    report = import_mbox(app, lst.name, path, progress=sys.stderr.isatty())
    print(f"imported into {lst.name}: {report.summary()}")
    app.close()
    return 1 if report.outcomes.get("failed") else 0


@command
def cmd_status(args: argparse.Namespace) -> int:
    from .status import status
    app = make_app(args)
    data = app.db.call(status, app)
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
    app.close()
    return 0 if data["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        handler = COMMANDS.get(args.command)
        if handler is None:
            raise ListserverError(f"'{args.command}' is not available yet")
        return handler(args)
    except ConfigError as exc:
        print(f"listserver: {exc}", file=sys.stderr)
        return 2
    except ListserverError as exc:
        print(f"listserver: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        if os.environ.get("LISTSERVER_DEBUG"):
            raise
        print(f"listserver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
