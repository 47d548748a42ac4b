"""What a page shows, made from database rows: no I/O here.

* ``thread``: comments as a tree in number order, indentation capped at ``max_depth``;
  deeper replies are laid flat under the deepest level and say which comment they answer.
  Iterative (a 10,000-deep chain of replies is fine) and total: a comment whose parent is
  missing, or a cycle, still shows, at the top level.
* ``text_html``: plain text as escaped paragraphs, URLs as links (rel nofollow).
* ``Privacy``: email addresses in what people wrote are shortened (``ka…@example.net``)
  unless the list shows addresses. It applies to text, to sanitised HTML (whose
  serialisation cannot hide an address inside markup) and to author fields.
* ``reply_mailto``: an RFC 6068 ``mailto:`` to the list's reply address for that message,
  with ``In-Reply-To``, and ``Subject`` last (some clients read everything after it as
  the subject).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from markupsafe import Markup, escape

from ..models import Comment

ADDRESS = re.compile(r"(?<![\w.%+-])([\w.%+-]{1,64})@((?:[\w-]{1,63}\.)+[a-zA-Z]{2,63})\b")
URL = re.compile(r"\bhttps?://[^\s<>\"'\]\[(){}]+[^\s<>\"'\]\[(){}.,;:!?]", re.I)


@dataclass
class Node:
    comment: Comment
    reply_to: int | None = None          # shown as "reply to #N" when laid flat
    children: list[Node] = field(default_factory=list)
    view: Any = None                     # what the page shows of it (render.CommentView)


def thread(comments: Iterable[Comment], max_depth: int) -> list[Node]:
    """The comment tree of a post, siblings in number order, at most ``max_depth`` deep."""
    ordered = sorted(comments, key=lambda c: c.number)
    by_id = {c.message_id: c for c in ordered}
    children: dict[str | None, list[Comment]] = {}
    for c in ordered:
        parent = c.parent_message_id if c.parent_message_id in by_id else None
        if parent == c.message_id:
            parent = None
        children.setdefault(parent, []).append(c)
    roots: list[Node] = []
    seen: set[str] = set()
    # (comment, depth of its node, the list it goes into, the number it answers if flat)
    stack: list[tuple[Comment, int, list[Node], int | None]] = [
        (c, 1, roots, None) for c in reversed(children.get(None, []))]
    while True:
        while stack:
            comment, depth, into, reply_to = stack.pop()
            if comment.message_id in seen:
                continue
            seen.add(comment.message_id)
            node = Node(comment, reply_to)
            into.append(node)
            kids = children.get(comment.message_id, [])
            if depth < max_depth:
                stack.extend((k, depth + 1, node.children, None) for k in reversed(kids))
            else:  # flat: at this level, right after their parent, saying whom they answer
                stack.extend((k, depth, into, comment.number) for k in reversed(kids))
        rest = [c for c in ordered if c.message_id not in seen]
        if not rest:
            return roots
        stack.append((rest[0], 1, roots, None))  # part of a cycle: show it at the top


def walk(nodes: list[Node]) -> Iterator[Node]:
    """Every node of a tree, parents before their children (iterative)."""
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def count_nodes(nodes: list[Node]) -> int:
    total, stack = 0, list(nodes)
    while stack:
        node = stack.pop()
        total += 1
        stack.extend(node.children)
    return total


class Privacy:
    def __init__(self, show_addresses: bool) -> None:
        self.show = show_addresses

    @staticmethod
    def shorten(address: str) -> str:
        local, _, domain = address.rpartition("@")
        keep = max(1, min(3, len(local) // 2))
        return f"{local[:keep]}…@{domain}"

    def text(self, value: str) -> str:
        if self.show or "@" not in value:
            return value
        return ADDRESS.sub(lambda m: self.shorten(m.group(0)), value)

    def html(self, value: str) -> Markup:
        """Sanitised HTML with addresses shortened (also inside mailto: links)."""
        if self.show or "@" not in value:
            return Markup(value)
        return Markup(ADDRESS.sub(lambda m: self.shorten(m.group(0)), value))

    def author(self, name: str, address: str) -> str:
        if name and "@" not in name:
            return name
        if name:
            return self.text(name)
        return address if self.show else (address.partition("@")[0] or "?")


PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


def _linked(text: str) -> str:
    """``text`` escaped, with its URLs as links (a URL never spans lines)."""
    if "://" not in text:
        return str(escape(text))
    out, pos = [], 0
    for m in URL.finditer(text):
        out.append(str(escape(text[pos:m.start()])))
        url = escape(m.group(0))
        out.append(f'<a href="{url}" rel="nofollow noopener">{url}</a>')
        pos = m.end()
    out.append(str(escape(text[pos:])))
    return "".join(out)


def text_html(text: str) -> Markup:
    """Plain text as HTML paragraphs: escaped, line breaks kept, URLs linked."""
    paragraphs = [p for p in PARAGRAPH_BREAK.split(text.strip("\n")) if p.strip()]
    return Markup("\n".join("<p>" + _linked(p).replace("\n", "<br>\n") + "</p>"
                             for p in paragraphs))


@lru_cache(maxsize=4096)   # a post's subject is quoted for every one of its comments
def rfc6068(value: str) -> str:
    return quote(value, safe="")


def reply_mailto(to: str, in_reply_to: str, subject: str) -> str:
    """``mailto:`` with In-Reply-To, and Subject last."""
    if not re.match(r"(?i)\s*(re|sv|aw|vs)\s*:", subject):
        subject = "Re: " + subject
    return (f"mailto:{quote(to, safe='@+')}?In-Reply-To={rfc6068(in_reply_to)}"
            f"&Subject={rfc6068(subject)}")
