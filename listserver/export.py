"""``listserver export``: the list as the JSON of DESIGN.md, or as a standard mbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from .config import Config, ListConfig
from .mbox import write_message
from .models import Comment, Message, Post
from .urls import comment_url, post_url


def _date(value: datetime, lst: ListConfig) -> str:
    return value.astimezone(lst.tz).isoformat()


def _comment(config: Config, lst: ListConfig, post: Post, c: Comment) -> dict[str, Any]:
    return {
        "number": c.number, "message_id": c.message_id, "parent": c.parent_message_id,
        "author": {"name": c.author_name, "address": c.author_address},
        "date": _date(c.date, lst), "text": c.text,
        "url": comment_url(config, lst.name, post.slug, c.number),
    }


def posts_of(session: Session, list_name: str) -> Iterator[Post]:
    query = (select(Post).where(Post.list_name == list_name, Post.state == "published")
             .order_by(Post.date, Post.id).options(selectinload(Post.comments))
             .execution_options(yield_per=500))
    yield from session.execute(query).scalars()


def export_json(session: Session, config: Config, lst: ListConfig) -> dict[str, Any]:
    posts = []
    for post in posts_of(session, lst.name):
        posts.append({
            "message_id": post.message_id, "title": post.title,
            "author": {"name": post.author_name, "address": post.author_address},
            "date": _date(post.date, lst),
            "url": post_url(config, lst.name, post.slug),
            "comments": [_comment(config, lst, post, c) for c in post.comments],
        })
    return {"list": lst.name, "posts": posts}


def write_json(session: Session, config: Config, lst: ListConfig, out: IO[str]) -> None:
    json.dump(export_json(session, config, lst), out, ensure_ascii=False, indent=1)
    out.write("\n")


def write_mbox(session: Session, lst: ListConfig, out: IO[bytes]) -> int:
    """Every published message's raw bytes, thread by thread, in mboxrd format."""
    count = 0
    for post in posts_of(session, lst.name):
        pks = [post.message_pk] + [c.message_pk for c in post.comments]
        for pk in pks:
            if pk is None:
                continue
            message = session.get(Message, pk)
            if message is None:
                continue
            write_message(out, message.raw, message.envelope_from or message.from_address or "",
                          message.received_at)
            count += 1
    return count
