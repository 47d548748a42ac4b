"""Known XSS vectors through HTML mail, plain-text mail, subjects and names: none survives
in any page or feed of the archive."""

from __future__ import annotations

import json

from lxml import etree

from archivekit import AUTHOR, deliver, list_dir, parse, post, render
from conftest import POST_SECRET, make_mail

VECTORS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><circle r=1></svg>",
    "<a href=\"javascript:alert(1)\">klikk</a>",
    "<a href=\"jav&#x09;ascript:alert(1)\">tab</a>",
    "<a href=\"JaVaScRiPt:alert(1)\">case</a>",
    "<a href=\"data:text/html,<script>alert(1)</script>\">data</a>",
    "<a href=\"vbscript:msgbox(1)\">vb</a>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<body onload=alert(1)>",
    "<div style=\"background:url(javascript:alert(1))\">stil</div>",
    "<math><mi xlink:href=\"javascript:alert(1)\">m</mi></math>",
    "\"><script>alert(1)</script>",
    "<object data=\"javascript:alert(1)\"></object>",
    "<embed src=\"javascript:alert(1)\">",
    "<form action=\"javascript:alert(1)\"><button formaction=\"javascript:alert(2)\">b</button>"
    "</form>",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "<base href=\"javascript:alert(1)//\">",
    "<img src=\"https://tracker.example/pixel.gif\" alt=\"sporing\">",
    "<style>@import 'https://evil.example/x.css';</style>",
    "<details open ontoggle=alert(1)>d</details>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">",
    "<template><script>alert(1)</script></template>",
    "<isindex type=image src=1 onerror=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<video><source onerror=\"alert(1)\"></video>",
    "<a href=\"&#106;avascript:alert(1)\">ent</a>",
    "<link rel=stylesheet href=\"https://evil.example/x.css\">",
    "<textarea></textarea><script>alert(1)</script>",
    "<!--<script>alert(1)</script>-->",
    "<<script>alert(1);//<</script>",
]
PAYLOAD = "\n".join(VECTORS)
BAD_SCHEMES = ("javascript:", "data:", "vbscript:")
BAD_TAGS = {"iframe", "object", "embed", "svg", "math", "base", "style", "form", "input",
            "button", "textarea", "video", "audio", "source", "template", "isindex", "frame"}


def html_mail(subject: str, body_html: str, sender: str, to: str, **headers: str) -> bytes:
    msg = make_mail(subject, "x", sender=sender, to=to, **headers)
    msg.set_content(body_html, subtype="html")
    return msg.as_bytes()


def check_tree(doc: etree._Element, where: str, own_scripts: tuple[str, ...] = ()) -> None:
    for own in doc.xpath("//section[@id='subscribe']"):  # our form, posting to our endpoint
        assert [f.get("action") for f in own.iter("form")] == [
            "http://archive.test/subscribe/blog"]
        own.getparent().remove(own)
    for el in doc.iter():
        if not isinstance(el.tag, str):
            continue
        tag = el.tag.lower()
        assert tag not in BAD_TAGS, f"{where}: <{tag}>"
        if tag == "script":
            assert el.get("src") in own_scripts and not (el.text or "").strip(), where
        if tag == "meta":
            assert el.get("http-equiv") is None or "javascript" not in (el.get("content") or
                                                                         "").lower(), where
        if tag == "img":
            assert not (el.get("src") or "").startswith(("http:", "https:", "//")), where
        if tag == "link":
            assert el.get("rel") in ("stylesheet", "alternate", "canonical", "icon"), where
            assert not el.get("href", "").startswith(("http://evil", "https://evil")), where
        for name, value in el.attrib.items():
            assert not name.lower().startswith("on"), f"{where}: {name}={value}"
            assert name.lower() != "style", f"{where}: style attribute"
            squashed = "".join(value.split()).lower()
            if tag == "link" and el.get("rel") == "icon" and squashed == "data:,":
                continue  # our own empty icon (no favicon request, no 404 in the console)
            assert not squashed.startswith(BAD_SCHEMES), f"{where}: {name}={value}"


def fragment(html: str) -> etree._Element:
    return parse(f"<!doctype html><html><head><title>x</title></head><body>{html}</body></html>")


def test_no_xss_vector_survives_in_pages_or_feeds(app) -> None:
    to = "blog@lists.example.org"
    secret = f"blog+post-{POST_SECRET}@lists.example.org"
    # an author's HTML post, with the vectors in the title and the name too
    raw = html_mail("<script>alert('title')</script> Innlegg", PAYLOAD,
                    "\"<img src=x onerror=alert(1)>\" <ivar@example.no>", to)
    assert deliver(app, raw, secret).outcome == "post"
    root = post(app, subject="Tekstinnlegg", body=PAYLOAD)
    mid = root["Message-ID"]
    # an HTML-only comment, a plain-text comment, a multipart comment
    html = html_mail("Re: Tekstinnlegg", PAYLOAD, "\"<svg onload=alert(1)>\" <x@example.net>",
                     to, In_Reply_To=mid, References=mid)
    assert deliver(app, html).outcome == "comment"
    text_reply = make_mail("Re: <b onmouseover=alert(1)>", PAYLOAD,
                           sender="Per <per@example.net>", in_reply_to=mid, references=mid)
    assert deliver(app, text_reply).outcome == "comment"
    both = make_mail("Re: Tekstinnlegg", PAYLOAD, sender=AUTHOR, in_reply_to=mid,
                     references=mid)
    both.add_alternative(PAYLOAD, subtype="html")
    assert deliver(app, both).outcome == "comment"
    render(app)
    d = list_dir(app)
    pages = [f for f in d.rglob("*.html") if "pagefind" not in f.parts]
    assert len(pages) > 8
    for page in pages:
        check_tree(parse(page), str(page), ("../search.js", "search.js", "../../search.js"))
    # the text of the vectors is still there, as text
    post_pages = list((d / "posts").glob("*.html"))
    assert any("<script>alert(1)</script>" in "".join(parse(p).itertext()) for p in post_pages)
    for feed in list(d.rglob("*.atom")):
        xml = etree.fromstring(feed.read_bytes())
        for content in xml.iter("{http://www.w3.org/2005/Atom}content"):
            check_tree(fragment(content.text or ""), str(feed))
        for title in xml.iter("{http://www.w3.org/2005/Atom}title"):
            assert title.get("type") in (None, "text")  # titles are plain text
    for feed in list(d.rglob("*.json")):
        if "pagefind" in feed.parts:
            continue
        for item in json.loads(feed.read_text())["items"]:
            check_tree(fragment(item["content_html"]), str(feed))
