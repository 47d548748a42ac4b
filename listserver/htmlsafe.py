"""HTML from mail: sanitising (nh3) and conversion to readable plain text (lxml).

Choices:

* ``sanitize_html`` is an allow-list via nh3 (ammonia, a real HTML5 parser): only basic
  formatting, links and tables survive; everything else is dropped, and the *content* of
  script/style/title/iframe/svg/math/noscript/template/... is dropped too, not just the tag.
  URLs are limited to http, https and mailto; relative URLs (meaningless in mail, and the
  ``<base href>`` trick) are removed. Links get ``rel="nofollow noopener"``.
* Images: nh3 keeps ``<img>`` with its ``src``; afterwards every ``<img>`` whose ``src`` is gone
  (``cid:``, ``data:``, relative, ``javascript:``...) or remote (http/https, unless
  ``allow_remote_images``) is replaced by its alt text. This post-pass is a regex on nh3's
  *output*, which is safe because that output is re-serialised HTML: attribute values are
  always double-quoted with ``& " < >`` escaped, so ``<img [^>]*>`` cannot be fooled.
  Remote images are tracking pixels in mail, hence off by default.
* ``html_to_text`` walks an lxml tree iteratively (no recursion, so deeply nested junk is
  fine): blocks become paragraphs, ``<br>`` a newline, list items ``- item`` / ``1. item``,
  blockquotes ``> ``-prefixed, links ``text (url)``; script/style/head are skipped.

* Hostile nesting: nh3's cost grows with nesting depth squared (100k nested ``<div>``: 17 s), so
  input with more than 5000 tags first goes through libxml2, which caps depth at 255. libxml2
  silently drops what lies deeper: html_to_text notices (ERR_RESOURCE_LIMIT) and falls back to
  a linear tag stripper rather than lose text.

Neither function raises: on anything unexpected they degrade (escaped text / tag-stripped text).
lxml parsers are created per call (they must not be shared between threads).
"""

from __future__ import annotations

import html as _html
import re

import nh3
from lxml import etree
from lxml import html as lxml_html

__all__ = ["sanitize_html", "html_to_text"]

_TAGS = frozenset(
    "a abbr b blockquote br caption cite code dd del div dl dt em h1 h2 h3 h4 h5 h6 hr i img "
    "ins kbd li ol p pre q s small span strike strong sub sup table tbody td tfoot th thead "
    "tr tt u ul".split()
)
# Tags removed together with everything inside them.
_DROP_CONTENT = frozenset(
    "script style title head iframe frame frameset object embed applet svg math noscript "
    "template textarea select xmp noembed noframes audio video canvas".split()
)
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "ol": {"start"},
}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_MANY_TAGS = 5000
_IMG = re.compile(r"<img\b[^>]*>", re.I)
_ATTR = re.compile(r'([a-z-]+)="([^"]*)"')


def _img_replacement(match: re.Match[str], allow_remote: bool) -> str:
    attrs = dict(_ATTR.findall(match.group(0)))
    src = attrs.get("src", "").strip().lower()
    if src.startswith(("http://", "https://")) and allow_remote:
        return match.group(0)
    return attrs.get("alt", "")  # already escaped by nh3 for attribute context: valid as text


def sanitize_html(html: str, allow_remote_images: bool = False) -> str:
    """Return a safe HTML fragment: formatting and links only (see module docstring)."""
    if not html:
        return ""
    html = _CONTROL.sub("", html)
    try:
        if html.count("<") > _MANY_TAGS:  # nh3 is quadratic in nesting depth (100k nested
            root = _parse(html, deep_ok=True)  # <div> take 17 s): let libxml2 cap it at 255
            html = "" if root is None else lxml_html.tostring(root, encoding="unicode")
        cleaned = nh3.clean(
            html,
            tags=set(_TAGS),
            clean_content_tags=set(_DROP_CONTENT),
            attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
            url_schemes={"http", "https", "mailto"},
            url_relative="deny",
            link_rel="nofollow noopener",
            strip_comments=True,
        )
    except Exception:  # nh3 is Rust; be paranoid anyway: fall back to fully escaped text
        return _html.escape(html_to_text(html))
    return _IMG.sub(lambda m: _img_replacement(m, allow_remote_images), cleaned).strip()


_BLOCK = frozenset(
    "address article aside center dd div dl dt fieldset figcaption figure footer form header "
    "hgroup main nav section summary details tr caption table".split()
)
_PARA = frozenset("p h1 h2 h3 h4 h5 h6 ul ol pre table hr dl".split())
_SKIP = frozenset("script style head title noscript template iframe object embed svg math".split())
_WS = re.compile(r"[ \t\n\r\f\v\xa0]+")


class _Out:
    """Text accumulator with paragraph/line-break bookkeeping."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def text(self, s: str | None, pre: bool) -> None:
        if not s:
            return
        if not pre:
            s = _WS.sub(" ", s)
            if not self.parts or self.parts[-1].endswith(("\n", " ")):
                s = s.lstrip(" ")
        if s:
            self.parts.append(s)

    def brk(self, n: int) -> None:
        """Ensure the output ends with at least n newlines (n=1 line, n=2 paragraph)."""
        if not self.parts:
            return
        tail = "".join(self.parts[-3:])
        have = len(tail) - len(tail.rstrip("\n"))
        if have < n:
            if self.parts[-1].endswith(" "):
                self.parts[-1] = self.parts[-1].rstrip(" ")
            self.parts.append("\n" * (n - have))

    def value(self) -> str:
        text = "".join(self.parts)
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _parse(html: str, deep_ok: bool = False) -> etree._Element | None:
    """lxml tree, None when empty. libxml2 drops what lies deeper than 255: that is an
    error unless ``deep_ok``."""
    data = _CONTROL.sub("", html).encode("utf-8")
    if not data.strip():
        return None
    parser = lxml_html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:  # a parser per call: lxml parser objects must not be shared between threads
        root = lxml_html.document_fromstring(data, parser=parser)
    except Exception:
        return None
    if not deep_ok and any(err.type_name == "ERR_RESOURCE_LIMIT" for err in parser.error_log):
        raise ValueError("HTML nested too deeply")
    return root


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML document or fragment (never raises)."""
    try:
        root = _parse(html or "")
        return "" if root is None else _render(root)
    except Exception:
        return _strip_tags(html or "")


_RAW_TEXT = re.compile(r"<(/?)(script|style)\b", re.I)


def _strip_tags(html: str) -> str:
    """Last resort (libxml2 gave up, e.g. nesting deeper than 255): linear-time tag stripping."""
    keep: list[str] = []
    pos, inside = 0, ""
    for m in _RAW_TEXT.finditer(html):
        closing, name = m.group(1), m.group(2).lower()
        if not inside and not closing:
            keep.append(html[pos:m.start()])
            inside = name
        elif inside == name and closing:
            end = html.find(">", m.end())
            pos, inside = (len(html) if end < 0 else end + 1), ""
    if not inside:
        keep.append(html[pos:])
    text = re.sub(r"<[^<>]*>", " ", "".join(keep))  # [^<>]: never rescans after a stray "<"
    return _WS.sub(" ", _html.unescape(text)).strip()


def _render(root: etree._Element) -> str:
    stack: list[_Out] = [_Out()]  # a new _Out per open blockquote
    lists: list[list[int]] = []  # per open ul/ol: [next number or 0 for bullets]
    pre = 0
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:
        tag = el.tag if isinstance(el.tag, str) else ""
        out = stack[-1]
        if event == "start":
            if not tag or tag in _SKIP:
                walker.skip_subtree()  # text skipped; the tail comes with the "end" event
                continue
            if tag in _PARA:
                out.brk(1 if tag in ("ul", "ol") and lists else 2)
            elif tag in _BLOCK or tag == "li":
                out.brk(1)
            if tag == "blockquote":
                out.brk(2)
                stack.append(_Out())
                out = stack[-1]
            elif tag in ("ul", "ol"):
                start = (el.get("start") or "1").strip()
                lists.append([(int(start) if re.fullmatch("[0-9]{1,9}", start) else 1) if tag == "ol" else 0])
            elif tag == "li":
                marker = "- "
                if lists and lists[-1][0]:
                    marker = f"{lists[-1][0]}. "
                    lists[-1][0] += 1
                out.parts.append("  " * max(len(lists) - 1, 0) + marker)
            elif tag == "br":
                out.parts.append("\n")
            elif tag == "pre":
                pre += 1
            elif tag == "img" and el.get("alt"):
                out.text(el.get("alt"), False)
            elif tag in ("td", "th") and out.parts and not out.parts[-1].endswith("\n"):
                out.parts.append(" ")
            out.text(el.text, pre > 0)
        else:
            if tag == "blockquote" and len(stack) > 1:
                inner = stack.pop().value()
                out = stack[-1]
                out.brk(2)
                out.parts.append("\n".join(("> " + ln) if ln else ">" for ln in inner.split("\n")))
                out.brk(2)
            elif tag in ("ul", "ol") and lists:
                lists.pop()
                out.brk(2 if not lists else 1)
            elif tag == "pre":
                pre = max(pre - 1, 0)
                out.brk(2)
            elif tag == "a":
                _link_suffix(el, out)
            elif tag in _PARA:
                out.brk(2)
            elif tag in _BLOCK or tag == "li":
                out.brk(1)
            if el is not root:
                out.text(el.tail, pre > 0)
    while len(stack) > 1:  # unclosed blockquotes cannot happen with lxml, but be total
        inner = stack.pop().value()
        stack[-1].parts.append("\n".join("> " + ln for ln in inner.split("\n")))
    return stack[0].value()


def _link_suffix(el: etree._Element, out: _Out) -> None:
    href = (el.get("href") or "").strip()
    label = _WS.sub(" ", el.text_content() or "").strip()
    if not href.lower().startswith(("http://", "https://", "mailto:")):
        return
    shown = href[7:] if href.lower().startswith("mailto:") else href
    if shown and shown != label and href != label:
        out.text(f" ({shown})" if label else shown, False)
