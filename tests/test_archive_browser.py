"""A post page with a deep thread in headless Chromium (Debian's chromium, installed by
.ci/run): no console errors, a screenshot; the search box finds a comment's page."""

from __future__ import annotations

import pytest

from archivekit import list_dir, post, render, reply
from browser import CHROMIUM, Browser
from conftest import RunningServer

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def test_deep_thread_in_a_browser(app, tmp_path) -> None:
    parent = post(app, body="Status for arbeidet. " + "Langtord" * 30)
    for n in range(1, 16):
        parent = reply(app, parent, f"Svar på nivå {n} med ordet nivåmerke{n}.\n\n> sitat",
                       "Kirstine <kirstine@example.no>")
    render(app, search=True)
    with RunningServer(app, roles=("http",)) as server, Browser() as browser:
        slug = next((list_dir(app) / "posts").glob("*.html")).name
        browser.open(f"http://127.0.0.1:{server.http_port}/blog/posts/{slug}")
        assert browser.evaluate("document.querySelectorAll('li.comment').length") == 15
        # the search box is there (Pagefind's UI, in Norwegian) and the page does not
        # scroll sideways on a phone, however long the words
        browser.evaluate("new Promise(r => setTimeout(r, 300))")
        assert browser.evaluate("!!document.querySelector('#search input')")
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot = tmp_path / "deep-thread.png"
        browser.screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert browser.errors() == []
        # searching for a word of one comment finds its page
        urls = search(browser, "nivåmerke7")
        assert urls == [f"/blog/posts/{slug}"] or urls == [f"/blog/posts/{slug[:-5]}"]
        assert browser.errors() == []


def search(browser: Browser, word: str) -> list[str]:
    """Pagefind's own search API, in the page, as the search box uses it."""
    return browser.evaluate(f"""(async () => {{
        const pf = await import(new URL("../pagefind/pagefind.js", location.href).href);
        await pf.options({{baseUrl: new URL("../", location.href).pathname}});
        const found = await pf.search({word!r});
        const data = await Promise.all(found.results.map(r => r.data()));
        return data.map(d => d.url);
    }})()""")
