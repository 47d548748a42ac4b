"""Bounce analysis: who failed, permanently or for now, according to a bounce message.

Two layers. RFC 3464 delivery-status reports are read with the standard library, because they
are structured and most MTAs send them today. Everything else (qmail, old Exchange, Yahoo, ...)
goes to flufl.bounce's heuristic detectors. Neither layer is trusted to raise nothing, so
``analyse_bounce`` catches everything: a bounce we cannot read must not stop the queue.

With VERP the failed subscriber is also known from the envelope recipient
(``blog+bounces-TOKEN@``); use that when the report names nobody. ``looks_like_bounce`` is the
cheap test for mail that is machine-made delivery noise and must never become a comment.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from listserver.autoreply import header_text


@dataclass(frozen=True)
class BounceReport:
    is_bounce: bool  # some recipient failed, permanently or temporarily
    permanent: frozenset[str]  # lowercased addresses that failed permanently
    temporary: frozenset[str]  # lowercased addresses with a temporary failure (delay DSNs)
    detector: str  # which detector found it: 'dsn', 'flufl' or ''


NOT_A_BOUNCE = BounceReport(False, frozenset(), frozenset(), "")


def _clean_address(value: str) -> str | None:
    """Lowercased bare address, or None for anything that is not plausibly one."""
    addr = value.strip().strip("<>\"'.,;: \t").lower()
    if addr.startswith("mailto:"):
        addr = addr[7:]
    if not addr or addr.count("@") != 1 or any(c.isspace() for c in addr):
        return None
    if "\ufffd" in addr or any("\udc80" <= c <= "\udcff" for c in addr):
        return None  # undecodable bytes: can't be matched to a subscriber faithfully
    local, _, domain = addr.partition("@")
    return addr if local and "." in domain else None


def _recipient(block: Message) -> str | None:
    """Original-Recipient if usable (the address we sent to), else Final-Recipient."""
    for field in ("original-recipient", "final-recipient"):
        value = block.get(field)
        if value is None:
            continue
        addr_type, sep, address = str(value).partition(";")
        if not sep:  # no address type: accept only an unmistakable <addr>
            address, addr_type = addr_type, "rfc822" if addr_type.strip().startswith("<") else ""
        if addr_type.strip().lower() in ("rfc822", "utf-8"):
            found = _clean_address(address)
            if found:
                return found
    return None


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):  # the parser already split the header blocks
        return [b for b in payload if isinstance(b, Message)]
    text = part.get_payload(decode=True)  # a string payload, maybe base64/qp encoded
    if not isinstance(text, bytes):
        return []
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.decode("utf-8", "replace"))
    return [email.message_from_string(b.strip() + "\n") for b in blocks if b.strip()]


def _from_dsn(msg: Message) -> tuple[set[str], set[str]] | None:
    """(permanent, temporary) from message/delivery-status parts, None if there are none."""
    found = False
    permanent: set[str] = set()
    temporary: set[str] = set()
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        found = True
        for block in _status_blocks(part):
            action = str(block.get("action", "")).strip().lower()
            if action.startswith(("fail", "error")):  # "failure", "error": seen in the wild
                target = permanent
            elif action.startswith("delayed"):
                target = temporary
            else:  # delivered, relayed, expanded, or the per-message block
                continue
            address = _recipient(block)
            if address:
                target.add(address)
    return (permanent, temporary) if found else None


def _from_flufl(msg: Message) -> tuple[set[str], set[str]]:
    temporary, permanent = all_failures(msg)

    def clean(found: frozenset[bytes]) -> set[str]:
        texts = (a.decode("ascii", "replace") for a in found)
        return {c for c in map(_clean_address, texts) if c}

    return clean(permanent), clean(temporary)


def analyse_bounce(raw: bytes) -> BounceReport:
    """Read a bounce: the addresses that failed permanently and temporarily. Never raises.

    ``is_bounce`` is True when some address was found failing or delayed. A success-only DSN, an
    unreadable bounce and ordinary mail all give ``is_bounce=False`` with empty sets. An address
    both failed and delayed (several report blocks) counts as permanent only.
    """
    try:
        msg = email.message_from_bytes(raw)  # compat32: what flufl.bounce's detectors expect
        permanent: set[str] = set()
        temporary: set[str] = set()
        detector = ""
        dsn = _from_dsn(msg)
        if dsn is not None and (dsn[0] or dsn[1]):
            (permanent, temporary), detector = dsn, "dsn"
        else:
            try:
                permanent, temporary = _from_flufl(msg)
            except Exception:  # noqa: BLE001 - flufl.bounce re-raises whatever a detector hits
                permanent, temporary = set(), set()
            detector = "flufl" if permanent or temporary else ""
        temporary -= permanent
        if not detector:
            return NOT_A_BOUNCE
        return BounceReport(True, frozenset(permanent), frozenset(temporary), detector)
    except Exception:  # noqa: BLE001 - the contract is "never raises"
        return NOT_A_BOUNCE


_BOUNCE_SENDERS = re.compile(
    r"^(mailer[-_]?daemon|postmaster|mdaemon|mail[-_]?delivery[-_]?system)$", re.IGNORECASE
)
_BOUNCE_SUBJECTS = re.compile(
    r"\b(?:undeliver|non[- ]?deliver|not (been )?delivered|could not be delivered"
    r"|delivery (status )?notification|delivery (status )?report|delivery (failure|problem)"
    r"|delivery has failed|mail delivery (failed|failure|warning|problem)|failure notice"
    r"|failed mail|mail failed|returned mail|returned to sender|mail system error"
    r"|message delayed|delayed mail|warning: message .*delayed|has not yet been delivered"
    r"|unzustellbar|nicht zustellbar|zustellung fehlgeschlagen|non remis|non recapitabile"
    r"|onbestelbaar|olevererbar|kan ikke leveres|ikke levert|kunne ikke leveres|ej levererat"
    r"|unable to deliver|permanent (delivery )?failure|mail error|user unknown)",
    re.IGNORECASE,
)


def looks_like_bounce(msg: Message, envelope_sender: str | None = None) -> bool:
    """Cheap heuristic: is this delivery noise (bounce, delay, DSN, MDN) rather than a person?

    Signals: a null envelope sender (``""`` or ``"<>"``; None means unknown), a MAILER-DAEMON or
    postmaster sender, ``Content-Type: multipart/report`` (delivery-status, read receipts and
    feedback reports alike) and the usual bounce subjects in several languages. Never raises.
    """
    try:
        if envelope_sender is not None:
            sender = envelope_sender.strip()
            if sender in ("", "<>"):
                return True
            if _BOUNCE_SENDERS.match(parseaddr(sender)[1].partition("@")[0]):
                return True
        for _name, addr in getaddresses([header_text(msg, "from")]):
            if _BOUNCE_SENDERS.match(addr.partition("@")[0]):
                return True
        if msg.get_content_type() == "multipart/report":
            return True
        return bool(_BOUNCE_SUBJECTS.search(header_text(msg, "subject")))
    except Exception:  # noqa: BLE001 - a heuristic must not take the pipeline down
        return False
