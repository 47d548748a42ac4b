"""DKIM-signing outgoing mail with the configured key (``outbound.dkim_key_file``).

The sender signs each mail as it goes out, after personalisation: the signature covers
``dkim.RECOMMENDED_HEADERS`` (From, Subject, Message-ID, both List-Unsubscribe headers and
the other list headers) for the list domain, ``d=`` equal to the From domain, so DMARC
aligns. A mail that cannot be signed goes out unsigned, with an error in the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from .dkim import RECOMMENDED_HEADERS, sign
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.outbound")


def make_signer(app: App) -> Callable[[bytes], bytes] | None:
    """A function that DKIM-signs a mail, or None when no key is configured."""
    key_file = str(app.config.outbound["dkim_key_file"])
    if not key_file:
        return None
    try:
        key = app.config.resolve(key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"outbound.dkim_key_file: cannot read {key_file}: "
                          f"{exc.strerror}") from None
    selector = str(app.config.outbound["dkim_selector"])
    domain = app.config.domain

    def signer(content: bytes) -> bytes:
        content = re.sub(rb"\r?\n", b"\r\n", content)
        try:
            return sign(content, selector, domain, key, RECOMMENDED_HEADERS) + content
        except ValueError as exc:
            log.error("DKIM signing failed, sending unsigned: %s", exc)
            return content
    return signer
