"""Typed settings read from ``config.toml``.

Every key is a row in ``SETTINGS`` (section, key, type, default, help), the way datasette
keeps its settings: the loader, the error messages and the README table all come from that
one table, and a test checks that the README lists every row. An unknown key or a bad
value raises :class:`ConfigError` naming the key; the CLI turns that into exit status 2.

Relative paths (the SQLite file, the Maildir outbox, the archive) are relative to the
directory of the config file, so a config and its data move together.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

LANGUAGES = ("en", "nb")
MODES = ("all", "posts", "digest", "none")


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def _positive(value: int | float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _score(value: int | float) -> str | None:
    return None if not isinstance(value, bool) and value > 0 else "must be a number above 0"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)
    return check


def _hhmm(value: str) -> str | None:
    return None if re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value) else "must be HH:MM"


def _optional_hhmm(value: str) -> str | None:
    return None if value == "" else _hhmm(value)


def _timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "is not a known time zone"
    return None


def _list_name(value: str) -> str | None:
    return None if re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value) else (
        "must be lowercase letters, digits, '.', '_' or '-'")


def _addresses(value: list[Any]) -> str | None:
    ok = all(isinstance(a, str) and re.fullmatch(r"[^@\s]+@[^@\s]+", a) for a in value)
    return None if ok else "must be a list of email addresses"


SETTINGS: tuple[Setting, ...] = (
    Setting("site", "domain", str, "lists.example.org", "Mail domain of every list address."),
    Setting("site", "base_url", str, "http://127.0.0.1:8080",
            "Public URL of the HTTP server, used in archive, unsubscribe and confirm links."),
    Setting("site", "separator", str, "+", "Separator between list name and command in addresses.",
            _one_of("+", "-")),
    Setting("site", "secret_file", str, "var/secret",
            "File holding the site secret for tokens (created if missing); "
            "LISTSERVER_SECRET overrides it."),
    Setting("site", "confirm_days", int, 3,
            "Days a confirmation mail (subscribe, unsubscribe, post, moderation) stays valid.",
            _positive),
    Setting("smtp", "host", str, "127.0.0.1", "Address the inbound SMTP server listens on."),
    Setting("smtp", "port", int, 8025, "Inbound SMTP port (0 picks a free port).", _port),
    Setting("smtp", "lmtp_port", int, -1,
            "LMTP port for an MTA in front (-1 disables LMTP, 0 picks a free port).",
            lambda v: None if v == -1 else _port(v)),
    Setting("smtp", "max_message_size", int, 10 * 1024 * 1024,
            "Largest message accepted, in bytes; larger ones get 552 5.3.4.", _positive),
    Setting("smtp", "workers", int, 0,
            "Receiver processes sharing the SMTP/LMTP ports (0: one per CPU core; "
            "1: receive in the main process).", lambda v: None if v >= 0 else "must be >= 0"),
    Setting("smtp", "max_recipients", int, 50, "Most recipients accepted in one transaction.",
            _positive),
    Setting("http", "host", str, "127.0.0.1", "Address the HTTP server listens on."),
    Setting("http", "port", int, 8080, "HTTP port (0 picks a free port).", _port),
    Setting("database", "url", str, "sqlite:///var/listserver.sqlite3",
            "SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB."),
    Setting("outbound", "transport", str, "maildir",
            "How outgoing mail leaves: 'maildir' writes files, 'smtp' sends through the relay.",
            _one_of("maildir", "smtp")),
    Setting("outbound", "maildir", str, "var/outbox", "Maildir that receives outgoing mail."),
    Setting("outbound", "host", str, "127.0.0.1", "Relay host when transport = 'smtp'."),
    Setting("outbound", "port", int, 25, "Relay port when transport = 'smtp'.", _port),
    Setting("outbound", "username", str, "", "Relay login name ('' for none); the password "
            "comes from LISTSERVER_RELAY_PASSWORD."),
    Setting("outbound", "starttls", bool, False, "Use STARTTLS with the relay."),
    Setting("outbound", "concurrency", int, 10, "Parallel relay connections.", _positive),
    Setting("outbound", "max_retry_age", int, 5 * 24 * 3600,
            "Seconds a temporarily failing mail is retried before it counts as a bounce.",
            _positive),
    Setting("outbound", "lease", int, 600,
            "Seconds a mail being sent stays claimed by its sender; one in flight when its "
            "sender died goes out again after this (keep it above the time a batch takes).",
            _positive),
    Setting("outbound", "dkim_key_file", str, "",
            "PEM private key to DKIM-sign outgoing mail ('' disables signing)."),
    Setting("outbound", "dkim_selector", str, "listserver", "DKIM selector of that key."),
    Setting("scheduler", "publish_interval", int, 30,
            "Seconds between checks for scheduled posts and night announcements that are due.",
            _positive),
    Setting("scheduler", "takeover_interval", int, 10,
            "Seconds between a standby scheduler's tries of the scheduler lock (how soon it "
            "takes over from one that died).", _positive),
    Setting("archive", "directory", str, "archive", "Where the static HTML archive is written."),
    Setting("archive", "show_addresses", bool, False,
            "Show email addresses in the archive instead of obfuscating them."),
    Setting("archive", "posts_per_page", int, 20,
            "Posts on each index page and in the feed of posts.", _positive),
    Setting("archive", "max_depth", int, 5,
            "Deepest indentation of replies; deeper ones are shown flat with 'reply to #N'.",
            _positive),
    Setting("archive", "search", bool, True,
            "Build a Pagefind full-text search index of the archive (the search box)."),
    Setting("archive", "search_delay", int, 10,
            "Seconds after the last change before serve rebuilds the search index.",
            _positive),
    Setting("list", "name", str, None, "List name: the local part of the list address.",
            _list_name),
    Setting("list", "title", str, "", "Title shown in mail and in the archive."),
    Setting("list", "description", str, "", "One paragraph about the list."),
    Setting("list", "authors", list, [], "Addresses allowed to publish new posts.", _addresses),
    Setting("list", "owners", list, [], "Addresses that receive NAME+owner@ mail and "
            "moderation notices.", _addresses),
    Setting("list", "language", str, "en", "Language of mail and pages: 'en' or 'nb'.",
            _one_of(*LANGUAGES)),
    Setting("list", "timezone", str, "UTC", "Time zone for dates in mail and pages.",
            _timezone),
    Setting("list", "post_secret", str, "",
            "Secret of the author posting address NAME+post-SECRET@; "
            "LISTSERVER_POST_SECRET_<NAME> overrides it."),
    Setting("list", "default_mode", str, "all", "Delivery mode of new subscribers.",
            _one_of(*MODES)),
    Setting("list", "bounce_threshold", (int, float), 5.0,
            "Bounce score at which delivery to a subscriber is disabled (a permanent failure "
            "adds 1, a temporary one 0.5, at most once a day).", _score),
    Setting("list", "bounce_reset_days", int, 7,
            "Days without a bounce after which a subscriber's bounce score starts again "
            "from 0.", _positive),
    Setting("list", "digest_time", str, "07:00",
            "Local time (HH:MM, the list's time zone) at which digests go out.", _hhmm),
    Setting("list", "digest_frequency", str, "daily", "How often digests go out.",
            _one_of("daily", "weekly")),
    Setting("list", "digest_day", str, "mon", "Weekday of weekly digests.",
            _one_of("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
    Setting("list", "announce_at", str, "",
            "HH:MM: posts published during the night (from quiet_from) are announced "
            "together at this local time; '' announces every post at once.", _optional_hhmm),
    Setting("list", "quiet_from", str, "22:00",
            "Local time from which the night starts, with announce_at.", _hhmm),
)


@dataclass(frozen=True)
class ListConfig:
    name: str
    title: str
    description: str
    authors: tuple[str, ...]
    owners: tuple[str, ...]
    language: str
    timezone: str
    post_secret: str
    default_mode: str
    bounce_threshold: float = 5.0
    bounce_reset_days: int = 7
    digest_time: str = "07:00"
    digest_frequency: str = "daily"
    digest_day: str = "mon"
    announce_at: str = ""
    quiet_from: str = "22:00"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Config:
    path: Path | None
    root: Path
    site: dict[str, Any]
    smtp: dict[str, Any]
    http: dict[str, Any]
    database: dict[str, Any]
    outbound: dict[str, Any]
    archive: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, ListConfig] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return str(self.site["domain"]).lower()

    @property
    def separator(self) -> str:
        return str(self.site["separator"])

    @property
    def database_url(self) -> str:
        url = str(self.database["url"])
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            url = prefix + str(self.root / url[len(prefix):])
        return url

    def resolve(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    @property
    def maildir(self) -> Path:
        return self.resolve(self.outbound["maildir"])

    @property
    def archive_dir(self) -> Path:
        return self.resolve(self.archive["directory"])

    def site_secret(self) -> bytes:
        """The HMAC key for tokens: from the environment, else a file created on first use."""
        env = os.environ.get("LISTSERVER_SECRET")
        if env:
            return env.encode()
        path = self.resolve(self.site["secret_file"])
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip().encode()


def _check_value(setting: Setting, value: Any, where: str) -> Any:
    kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
    if setting.kind is int and isinstance(value, bool):
        raise ConfigError(f"{where}: must be an integer")
    if not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: must be of type {names}, not {type(value).__name__}")
    if setting.check is not None:
        problem = setting.check(value)
        if problem:
            raise ConfigError(f"{where}: {value!r} {problem}")
    return value


def _section(name: str, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {s.key: s for s in SETTINGS if s.section == name}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key")
    out: dict[str, Any] = {}
    for key, setting in known.items():
        if key in table:
            out[key] = _check_value(setting, table[key], f"{where}.{key}")
        elif setting.default is None:
            raise ConfigError(f"{where}.{key}: required")
        else:
            out[key] = setting.default
    return out


def _list(table: Any, index: int) -> ListConfig:
    values = _section("list", table, f"list[{index}]")
    name = values["name"]
    env_secret = os.environ.get("LISTSERVER_POST_SECRET_" + re.sub(r"\W", "_", name).upper())
    return ListConfig(
        name=name,
        title=values["title"] or name,
        description=values["description"],
        authors=tuple(a.lower() for a in values["authors"]),
        owners=tuple(a.lower() for a in values["owners"]),
        language=values["language"],
        timezone=values["timezone"],
        post_secret=env_secret or values["post_secret"],
        default_mode=values["default_mode"],
        bounce_threshold=float(values["bounce_threshold"]),
        bounce_reset_days=values["bounce_reset_days"],
        digest_time=values["digest_time"],
        digest_frequency=values["digest_frequency"],
        digest_day=values["digest_day"],
        announce_at=values["announce_at"],
        quiet_from=values["quiet_from"],
    )


def parse_config(data: dict[str, Any], path: Path | None = None,
                 root: Path | None = None) -> Config:
    sections = ("site", "smtp", "http", "database", "outbound", "scheduler", "archive")
    for key in data:
        if key not in sections and key != "list":
            raise ConfigError(f"{key}: unknown section")
    parsed = {name: _section(name, data.get(name, {}), name) for name in sections}
    raw_lists = data.get("list", [])
    if not isinstance(raw_lists, list):
        raise ConfigError("list: must be an array of tables ([[list]])")
    lists: dict[str, ListConfig] = {}
    for index, table in enumerate(raw_lists):
        lst = _list(table, index)
        if lst.name in lists:
            raise ConfigError(f"list[{index}].name: duplicate list {lst.name!r}")
        lists[lst.name] = lst
    if root is None:
        root = path.parent.resolve() if path else Path.cwd()
    return Config(path=path, root=root, lists=lists, **parsed)


def load_config(path: Path) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (run 'listserver init')") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path=path)


def settings_table() -> str:
    """The settings as a Markdown table, for the README."""
    rows = ["| key | default | help |", "|---|---|---|"]
    for s in SETTINGS:
        prefix = "[[list]]" if s.section == "list" else f"[{s.section}]"
        default = "(required)" if s.default is None else repr(s.default).replace("'", '"')
        rows.append(f"| `{prefix} {s.key}` | `{default}` | {s.help} |")
    return "\n".join(rows)
