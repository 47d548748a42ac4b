"""The rendered archive, parsed as HTML5: numbering, nesting, anchors, reply links, both
languages, privacy, message pages, raw sources, thread mbox, index and month pages."""

from __future__ import annotations

import email.utils
import mailbox
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from listserver import urls
from listserver.config import parse_config

from archivekit import TITLE, deliver, list_dir, parse, post, post_page, render, reply, text
from conftest import POST_SECRET, config_dict, make_mail

LATIN1 = (
    "From: Åse Bø <ase@example.no>\nTo: {list}@lists.example.org\n"
    "Subject: Re: {title}\nDate: Fri, 09 Mar 2018 11:15:00 +0100\nMessage-ID: {mid}\n"
    "In-Reply-To: {parent}\nReferences: {parent}\nMIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: 8bit\n\n"
    "Blåbærsyltetøy og kaffe på Grünerløkka. Særs godt æøå ÆØÅ.\n")
HTML_ONLY = (
    "From: Mia <mia@example.no>\nTo: {list}@lists.example.org\nSubject: Re: {title}\n"
    "Date: Fri, 09 Mar 2018 12:00:00 +0100\nMessage-ID: {mid}\nIn-Reply-To: {parent}\n"
    "References: {parent}\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n"
    "<html><body><p>Jeg er <strong>helt enig</strong>, se "
    "<a href=\"https://example.org/rapport\">rapporten</a>.</p></body></html>\n")


def raw(template: str, mid: str, parent: str, list_name: str = "blog") -> bytes:
    data = template.format(mid=mid, parent=parent, title=TITLE, list=list_name)
    return data.encode("iso-8859-1" if "ISO-8859-1" in template else "utf-8")


def dozen(app, list_name: str = "blog") -> dict[int, str]:
    """A post with twelve comments: nested, a chain deeper than the cap, Norwegian
    ISO-8859-1 mail, HTML-only mail, a quote. Returns comment number -> Message-ID."""
    p = post(app, list_name=list_name)
    oslo = datetime(2018, 3, 9, 8, 2, tzinfo=timezone.utc)  # 09:02 in Oslo
    c = {1: reply(app, p, "Flott innlegg!", "Kirstine <kirstine@example.no>", list_name, oslo)}
    c[2] = reply(app, c[1], "Enig med Kirstine.", "Ola <ola@example.no>", list_name)
    mids = {1: c[1]["Message-ID"], 2: c[2]["Message-ID"]}
    m3 = f"<latin1.{list_name}@example.no>"
    assert deliver(app, raw(LATIN1, m3, mids[2], list_name), list_name=list_name).outcome == \
        "comment"
    mids[3] = m3
    m4 = f"<html.{list_name}@example.no>"
    assert deliver(app, raw(HTML_ONLY, m4, m3, list_name), list_name=list_name).outcome == \
        "comment"
    mids[4] = m4
    parent = make_mail("Re: " + TITLE, "x", message_id=m4)
    for n in (5, 6, 7):  # a chain: 5 under 4, 6 under 5 (depth 6), 7 under 6
        parent = reply(app, parent, f"Dypere svar nummer {n}.", "Per <per@example.no>",
                       list_name)
        mids[n] = parent["Message-ID"]
    c[8] = reply(app, p, "Et spørsmål.\n\nOn Fri, Ivar <ivar@example.no> wrote:\n> Status for "
                 "arbeidet.\n> Mer tekst.", "Jon <jon@example.no>", list_name)
    mids[8] = c[8]["Message-ID"]
    c[9] = reply(app, c[8], "Svar på spørsmålet.", "Ivar Johansen <ivar@example.no>",
                 list_name)
    mids[9] = c[9]["Message-ID"]
    c[10] = reply(app, c[1], "Også enig.", "Kari <kari@example.no>", list_name)
    mids[10] = c[10]["Message-ID"]
    c[11] = reply(app, p, "Hva med bydelene?", "Mia <mia@example.no>", list_name)
    mids[11] = c[11]["Message-ID"]
    c[12] = reply(app, c[11], "Se https://www.oslo.kommune.no/" + "x" * 120, "Per <per@example.no>",
                  list_name)
    mids[12] = c[12]["Message-ID"]
    mids[0] = p["Message-ID"]
    return mids


def nearest_comment(li):
    for anc in li.iterancestors("li"):
        if "comment" in (anc.get("class") or ""):
            return anc
    return None


def test_a_dozen_nested_comments_render_as_a_readable_thread(app) -> None:
    mids = dozen(app)
    render(app)
    doc = parse(post_page(app))
    assert doc.get("lang") == "nb"
    assert text(doc.find(".//h1")) == TITLE
    items = doc.xpath("//li[contains(@class, 'comment')]")
    assert sorted(int(li.get("id")[1:]) for li in items) == list(range(1, 13))
    for li in items:  # the anchor, the number and its link
        number = li.get("id")[1:]
        link = li.find(".//a[@class='number']")
        assert link.get("href") == f"#c{number}" and text(link) == f"#{number}"
    by = {int(li.get("id")[1:]): li for li in items}
    # "#1 Kirstine 09-03-2018 09:02", as on the original blog (Oslo time)
    assert text(by[1].find(".//header")) == "#1 Kirstine 09-03-2018 09:02"
    parent = {n: nearest_comment(li) for n, li in by.items()}
    assert parent[1] is None and parent[8] is None and parent[11] is None
    assert parent[2] is by[1] and parent[10] is by[1] and parent[3] is by[2]
    assert parent[4] is by[3] and parent[5] is by[4] and parent[9] is by[8]
    assert parent[12] is by[11]
    # max_depth 5: #6 (depth 6) and #7 are laid flat beside #5, saying whom they answer
    assert parent[6] is by[4] and parent[7] is by[4]
    assert text(by[6].find(".//span[@class='reply-to']")) == "svar til #5"
    assert by[7].find(".//span[@class='reply-to']/a").get("href") == "#c6"
    assert by[5].find(".//span[@class='reply-to']") is None
    for li in items:
        assert len([a for a in li.iterancestors("ol")]) <= 5
    # document order: the thread, depth first, siblings by number
    assert [int(li.get("id")[1:]) for li in items] == [1, 2, 3, 4, 5, 6, 7, 10, 8, 9, 11, 12]
    # ISO-8859-1 and HTML-only mail
    assert "Blåbærsyltetøy og kaffe på Grünerløkka" in text(by[3].find(".//div[@class='body']"))
    body4 = by[4].find(".//div[@class='body']")
    assert text(body4.find(".//strong")) == "helt enig"
    assert body4.find(".//a").get("href") == "https://example.org/rapport"
    # quoted text folded, the new text shown
    details = by[8].find("./article/details")
    assert details is not None and text(details.find("summary")) == "Sitert tekst"
    assert "Mer tekst." in text(details) and "Mer tekst." not in text(by[8].find(".//div"))
    # reply links: mailto the list's reply address, In-Reply-To, Subject last
    for n, li in by.items():
        href = li.find(".//a[@class='reply']").get("href")
        parts = urlsplit(href)
        assert parts.scheme == "mailto"
        assert unquote(parts.path).startswith("blog+reply-")
        assert unquote(parts.path).endswith("@lists.example.org")
        query = parse_qsl(parts.query)
        assert [k for k, _ in query] == ["In-Reply-To", "Subject"]
        assert dict(query)["In-Reply-To"] == mids[n]
        assert dict(query)["Subject"] == "Re: " + TITLE
    add = doc.xpath("//a[@class='add-comment']")
    assert add and text(add[0]) == "Legg til kommentar"
    assert dict(parse_qsl(urlsplit(add[0].get("href")).query))["In-Reply-To"] == mids[0]
    assert text(doc.find(".//section[@id='comments']/h2")) == "Kommentarer (12)"
    # nothing needs script: one script only, the search box
    assert [s.get("src") for s in doc.iter("script")] == ["../search.js"]
    assert not doc.xpath("//*[@*[starts-with(name(), 'on')]]")


def test_english_list_and_its_dates(tmp_path: Path, database_url: str, make_app) -> None:
    data = config_dict(database_url, en={"name": "en", "language": "en", "timezone": "UTC",
                                         "authors": ["ivar@example.no"],
                                         "post_secret": POST_SECRET})
    app = make_app(parse_config(data, root=tmp_path))
    dozen(app, "en")
    render(app)
    doc = parse(post_page(app, "en"))
    assert doc.get("lang") == "en"
    assert text(doc.xpath("//a[@class='add-comment']")[0]) == "Add comment"
    assert text(doc.find(".//li[@id='c1']//header")) == "#1 Kirstine 9 Mar 2018 08:02"
    assert text(doc.find(".//li[@id='c6']//span[@class='reply-to']")) == "reply to #5"
    assert text(doc.find(".//section[@id='comments']/h2")) == "Comments (12)"
    index = parse(list_dir(app, "en") / "index.html")
    assert text(index.find(".//a[@class='comment-count']")) == "12 comments"
    assert text(index.find(".//section[@id='subscribe']/h2")) == "Subscribe"


def test_addresses_are_hidden_unless_the_list_shows_them(tmp_path, database_url,
                                                         make_app) -> None:
    for show in (False, True):
        root = tmp_path / str(show)
        data = config_dict(database_url)
        data["archive"]["show_addresses"] = show
        app = make_app(parse_config(data, root=root))
        p = post(app, subject=f"Adresser {show}", body="Skriv til ivar@example.no.")
        reply(app, p, "Min er kari.nordmann@example.net\n\n> kirstine@example.no skrev",
              "kari.nordmann@example.net")
        render(app)
        files = [f for f in list_dir(app).rglob("*") if f.is_file()
                 and f.suffix in (".html", ".atom", ".json") and "pagefind" not in f.parts]
        pages = "".join(f.read_text(encoding="utf-8") for f in files)
        for address in ("ivar@example.no", "kari.nordmann@example.net", "kirstine@example.no"):
            assert (address in pages) is show, address
        if not show:
            assert "kar…@example.net" in pages
        # the raw sources are the messages as received
        raws = "".join(f.read_text("latin-1") for f in list_dir(app).rglob("raw.txt"))
        assert "kari.nordmann@example.net" in raws


def test_message_pages_raw_sources_and_thread_mbox(app) -> None:
    p = post(app, message_id="<odd/id+with=chars%41@example.no>")
    c1 = reply(app, p, "Første kommentar.", "Kirstine <kirstine@example.no>")
    c2 = reply(app, c1, "Andre.", "Ola <ola@example.no>")
    render(app)
    root = app.config.archive_dir
    slug = post_page(app).stem
    for mid, target in [(p["Message-ID"], f"{slug}.html"), (c1["Message-ID"], f"{slug}.html#c1"),
                        (c2["Message-ID"], f"{slug}.html#c2")]:
        url = urls.message_url(app.config, "blog", mid)
        # what any static web server does: decode the URL path, find the directory
        folder = root / unquote(urlsplit(url).path).strip("/")
        assert folder.is_dir() and folder.parent.parent == root / "blog", url
        page = parse(folder / "index.html")
        refresh = page.find(".//meta[@http-equiv='refresh']").get("content")
        assert refresh == f"0; url=../../posts/{target}"
        assert (folder / "raw.txt").read_bytes().startswith(b"From: ")
        assert b"Message-ID: " + mid.encode() in (folder / "raw.txt").read_bytes()
    box = mailbox.mbox(str(list_dir(app) / "posts" / f"{slug}.mbox"))
    try:
        assert [m["Message-ID"] for m in box] == [p["Message-ID"], c1["Message-ID"],
                                                   c2["Message-ID"]]
    finally:
        box.close()


def test_index_pages_months_and_pagination(tmp_path, database_url, make_app) -> None:
    data = config_dict(database_url)
    data["archive"]["posts_per_page"] = 3
    app = make_app(parse_config(data, root=tmp_path))
    dates = [datetime(2018, m, d, 12, tzinfo=timezone.utc) for m, d in
             [(1, 5), (1, 20), (2, 3), (2, 14), (3, 1), (3, 9), (3, 30)]]
    for n, when in enumerate(dates):
        msg = make_mail(f"Innlegg {n}", f"Tekst {n}", sender="Ivar <ivar@example.no>")
        del msg["Date"]
        msg["Date"] = email.utils.format_datetime(when)
        assert deliver(app, msg, f"blog+post-{POST_SECRET}@lists.example.org").outcome == "post"
    render(app)
    d = list_dir(app)
    index = parse(d / "index.html")
    titles = [text(a) for a in index.xpath("//ol[@class='posts']//h2/a")]
    assert titles == ["Innlegg 6", "Innlegg 5", "Innlegg 4"]
    assert index.find(".//form").get("action") == "http://archive.test/subscribe/blog"
    assert index.find(".//form//input[@type='email']") is not None
    assert index.xpath("//a[@rel='next']")[0].get("href") == "page/2.html"
    pages = {n: [text(a) for a in parse(d / "page" / f"{n}.html").xpath("//ol//h2/a")]
             for n in (1, 2, 3)}
    assert pages == {1: ["Innlegg 2", "Innlegg 1", "Innlegg 0"],
                     2: ["Innlegg 5", "Innlegg 4", "Innlegg 3"], 3: ["Innlegg 6"]}
    march = parse(d / "month" / "2018-03.html")
    assert text(march.find(".//h1")) == "Innlegg fra mars 2018"
    assert [text(a) for a in march.xpath("//ol//h2/a")] == ["Innlegg 6", "Innlegg 5",
                                                          "Innlegg 4"]
    months = [text(li) for li in parse(d / "months.html").xpath("//ul[@class='months']/li")]
    assert months == ["mars 2018 (3 innlegg)", "februar 2018 (2 innlegg)",
                      "januar 2018 (2 innlegg)"]
    entry = index.xpath("//ol[@class='posts']/li")[0]
    assert "0 kommentarer" in text(entry) and "30. mars 2018" in text(entry)


def test_every_visible_string_has_a_norwegian_translation() -> None:
    from babel.messages.extract import extract_from_dir
    from listserver.i18n import LOCALE_DIR
    from babel.messages.pofile import read_po
    templates = Path(__file__).resolve().parents[1] / "listserver" / "templates"
    found = {m[2] if isinstance(m[2], str) else m[2][0] for m in extract_from_dir(
        str(templates), [("archive/**.html", "jinja2"), ("archive/**.xml", "jinja2")],
        {"archive/**.html": {"trim_blocks": "True", "lstrip_blocks": "True"},
         "archive/**.xml": {"trim_blocks": "True", "lstrip_blocks": "True"}})}
    with open(LOCALE_DIR / "nb" / "LC_MESSAGES" / "messages.po", "rb") as fh:
        catalog = read_po(fh)
    assert found
    for msgid in found:
        message = catalog.get(msgid)
        assert message is not None and message.string and not message.fuzzy, msgid
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings), msgid


@pytest.mark.parametrize("depth", [1, 3])
def test_depth_cap_is_a_setting(tmp_path, database_url, make_app, depth) -> None:
    data = config_dict(database_url)
    data["archive"]["max_depth"] = depth
    app = make_app(parse_config(data, root=tmp_path))
    parent = post(app)
    for n in range(6):
        parent = reply(app, parent, f"Nivå {n}", "Per <per@example.no>")
    render(app)
    doc = parse(post_page(app))
    for li in doc.xpath("//li[contains(@class, 'comment')]"):
        assert len(list(li.iterancestors("ol"))) <= depth
