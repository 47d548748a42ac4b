"""Public URLs of archive pages, shared by mail, export and the renderer.

Paths (``*_path``) are relative to the archive root; URLs (``*_url``) are absolute, made
from ``[site] base_url``. Pages link to each other with relative paths, so a list's
directory works from any web server and under any prefix.
"""

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


def msgid_segment(message_id: str) -> str:
    """The directory name of a message below ``NAME/msgid/``: safe on any file system.

    Everything but letters, digits and ``@+=-._~`` is percent-encoded, so ``/`` and ``..``
    can never form a path. The name may contain ``%``; its URL encodes that ``%`` again.
    """
    return quote(message_id.strip().strip("<>"), safe="@+=") or "_"


def msgid_path(list_name: str, message_id: str) -> str:
    """Directory (below the archive root) of a message's redirect page and raw source."""
    return f"{list_name}/msgid/{msgid_segment(message_id)}"


def message_url(config: Config, list_name: str, message_id: str) -> str:
    """Permanent URL made from a Message-ID; the archive redirects it to its place."""
    return f"{base(config)}/{msgid_path(list_name, message_id).replace('%', '%25')}/"


def raw_url(config: Config, list_name: str, message_id: str) -> str:
    """The raw source of a published message, as received."""
    return message_url(config, list_name, message_id) + "raw.txt"


def thread_mbox_url(config: Config, list_name: str, slug: str) -> str:
    return f"{base(config)}/{list_name}/posts/{slug}.mbox"


def feed_url(config: Config, list_name: str, kind: str = "atom") -> str:
    """The list's feed of posts: kind 'atom' or 'json'."""
    return f"{base(config)}/{list_name}/feed.{kind}"


def comments_feed_url(config: Config, list_name: str, slug: str, kind: str = "atom") -> str:
    """The feed of one post's comments: kind 'atom' or 'json'."""
    return f"{base(config)}/{list_name}/posts/{slug}.{kind}"


def subscribe_url(config: Config, list_name: str) -> str:
    """Where the archive's subscribe form posts (fields ``address`` and ``name``)."""
    return f"{base(config)}/subscribe/{list_name}"


def unsubscribe_url(config: Config, token: str) -> str:
    return f"{base(config)}/unsubscribe/{token}"


def confirm_url(config: Config, token: str) -> str:
    return f"{base(config)}/confirm/{token}"
