"""Moderator decisions on held messages, shared by the CLI and the email notices."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ListserverError
from .models import Message, utcnow


def held(session: Session, list_name: str) -> list[Message]:
    return list(session.execute(select(Message).where(
        Message.list_name == list_name, Message.state == "held").order_by(
        Message.id)).scalars())


def _held_message(session: Session, pk: int) -> Message:
    message = session.get(Message, pk, with_for_update=True)
    if message is None:
        raise ListserverError(f"no message with id {pk}")
    if message.state != "held":
        raise ListserverError(f"message {pk} is not held (it is {message.state})")
    return message


def approve(session: Session, pk: int) -> Message:
    """Queue a held message again with the hold rules switched off."""
    message = _held_message(session, pk)
    message.approved = True
    message.state = "queued"
    message.waiting_for = None
    message.outcome = None
    return message


def reject(session: Session, pk: int, reason: str = "") -> Message:
    message = _held_message(session, pk)
    message.state = "done"
    message.outcome = "rejected"
    message.reason = f"rejected by a moderator{': ' + reason if reason else ''}"
    message.waiting_for = None
    message.processed_at = utcnow()
    return message


def retry_failed(session: Session, list_name: str | None = None) -> int:
    query = select(Message).where(Message.state == "failed")
    if list_name:
        query = query.where(Message.list_name == list_name)
    count = 0
    for message in session.execute(query).scalars():
        message.state = "queued"
        count += 1
    return count
