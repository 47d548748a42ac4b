"""The addresses of a list: ``NAME@``, ``NAME+COMMAND@`` and ``NAME+COMMAND-TOKEN@``.

``parse_address`` answers which list and which role an envelope recipient names, or None
for anything that is not ours (the SMTP server then answers ``550 5.1.1``: it never relays).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from .config import Config

# Commands without a token, and commands that carry one after a dash.
PLAIN_COMMANDS = frozenset({"subscribe", "unsubscribe", "help", "owner", "bounces", "request"})
TOKEN_COMMANDS = frozenset({"confirm", "bounces", "reply", "post"})
ALIASES = {"join": "subscribe", "leave": "unsubscribe"}
TOKEN_RE = re.compile(r"[a-z0-9]{4,64}")


@dataclass(frozen=True)
class ListAddress:
    list_name: str
    command: str = ""      # '' is the post address
    token: str = ""

    @property
    def is_post_address(self) -> bool:
        return self.command in ("", "post", "reply")


def split_address(address: str) -> tuple[str, str]:
    address = address.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def parse_address(address: str, config: Config) -> ListAddress | None:
    local, domain = split_address(address)
    if not local or domain != config.domain:
        return None
    local = local.lower()
    sep = config.separator
    name, _, extension = local.partition(sep)
    lst = config.lists.get(name)
    if lst is None:
        return None
    if not extension:
        return ListAddress(name)
    extension = ALIASES.get(extension, extension)
    if extension in PLAIN_COMMANDS:
        return ListAddress(name, extension)
    command, _, token = extension.partition("-")
    if command not in TOKEN_COMMANDS or not TOKEN_RE.fullmatch(token):
        return None
    if command == "post":
        # The author posting address: only the configured secret is an address at all.
        if not lst.post_secret or not hmac.compare_digest(token, lst.post_secret.lower()):
            return None
    return ListAddress(name, command, token)


def list_address(config: Config, name: str, command: str = "", token: str = "") -> str:
    local = name
    if command:
        local += config.separator + command + (f"-{token}" if token else "")
    return f"{local}@{config.domain}"
