"""Public URLs of archive pages, shared by mail, export and the renderer."""

from __future__ import annotations

from urllib.parse import quote

from .config import Config


def base(config: Config) -> str:
    return str(config.site["base_url"]).rstrip("/")


def list_url(config: Config, list_name: str) -> str:
    return f"{base(config)}/{list_name}/"


def post_path(list_name: str, slug: str) -> str:
    """Path of a post page below the archive root."""
    return f"{list_name}/posts/{slug}.html"


def post_url(config: Config, list_name: str, slug: str) -> str:
    return f"{base(config)}/{post_path(list_name, slug)}"


def comment_url(config: Config, list_name: str, slug: str, number: int) -> str:
    return f"{post_url(config, list_name, slug)}#c{number}"


def message_url(config: Config, list_name: str, message_id: str) -> str:
    """Permanent URL made from a Message-ID; the archive redirects it to its place."""
    return f"{base(config)}/{list_name}/msgid/{quote(message_id.strip('<>'), safe='@')}/"


def unsubscribe_url(config: Config, token: str) -> str:
    return f"{base(config)}/unsubscribe/{token}"


def confirm_url(config: Config, token: str) -> str:
    return f"{base(config)}/confirm/{token}"
