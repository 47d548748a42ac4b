"""Every mail and page template exists in English and Norwegian, and every notice renders."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone
from pathlib import Path

import pytest

from listserver import subscriptions
from listserver.app import BUILTIN_TEMPLATES, App
from listserver.config import Config, parse_config
from listserver.models import Message, Subscription
from listserver.notices import compose
from listserver.parse import parse_message

from conftest import config_dict

LANGUAGES = ("en", "nb")


def localised(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (BUILTIN_TEMPLATES / folder).iterdir():
        parts = path.name.split(".")
        if len(parts) == 3 and parts[1] in LANGUAGES:
            found.setdefault(f"{parts[0]}.{parts[2]}", set()).add(parts[1])
    return found


@pytest.mark.parametrize("folder", ["email", "web"])
def test_every_template_has_both_languages(folder: str) -> None:
    found = localised(folder)
    assert found
    assert {name: langs for name, langs in found.items() if langs != set(LANGUAGES)} == {}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_notice_renders(language: str, tmp_path: Path, make_app) -> None:  # type: ignore
    config: Config = parse_config(config_dict(f"sqlite:///{tmp_path / 'db.sqlite3'}",
                                              blog={"language": language}), root=tmp_path)
    app: App = make_app(config)
    lst = config.lists["blog"]
    sub = Subscription(list_name="blog", address="kari@example.net", name="Kari", mode="posts",
                       state="active")
    raw = b"From: Kari <kari@example.net>\r\nSubject: Hei\r\n\r\nTekst.\r\n"
    values = subscriptions.values(
        app, lst, sub=sub, confirm="blog+confirm-x@lists.example.org",
        confirm_url="http://archive.test/confirm/x", mode="posts", days=3,
        address="kari@example.net", why="expired", subject="Hei",
        results=[("set", "mode-set", "posts"), ("set", "bad-mode", "weekly"),
                 ("subscribe", "sent", "all"), ("hei", "unknown", "")],
        message=Message(id=7, reason="held", hint=None, subject="Hei",
                        from_address="kari@example.net"), parsed=parse_message(raw),
        title="Planlagt", when=datetime(2026, 3, 10, 7, 0, tzinfo=timezone.utc),
        expires=datetime(2026, 3, 24, 7, 0, tzinfo=timezone.utc))
    names = [p.name.split(".")[0] for p in (BUILTIN_TEMPLATES / "email").glob(
        f"*.{language}.txt") if not p.name.startswith(("_", "list_mail", "digest"))]
    assert len(names) >= 12
    for name in names:
        mail = email.message_from_bytes(compose(app, lst, "kari@example.net", name, **values),
                                        policy=email.policy.default)
        assert mail["Subject"] and "{" not in mail["Subject"], name
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail.get_content().strip(), name
