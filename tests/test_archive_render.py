"""The full render's fast paths give the same files as the plain ones: forked workers,
and message pages made from one rendering per post (with its fall-back)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from listserver import urls
from listserver.archive import Archive, render as render_module
from listserver.importer import import_mbox

from archivekit import list_dir
from mboxgen import generate


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if name != ".listserver-state.json":
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def test_forked_workers_write_the_same_archive(app, tmp_path, monkeypatch) -> None:
    gen = generate(tmp_path / "gen.mbox", 300, variety=True)
    import_mbox(app, "blog", gen.path)
    monkeypatch.setattr(render_module, "CHUNK", 7)  # many chunks for two workers
    assert Archive(app).render_full(workers=1) == gen.threads
    alone = tree(app.config.archive_dir)
    shutil.rmtree(app.config.archive_dir)
    assert Archive(app).render_full(workers=2) == gen.threads
    assert tree(app.config.archive_dir) == alone
    assert len([f for f in alone if f.endswith("/raw.txt")]) == gen.messages


def test_message_pages_when_the_template_formats_the_number(app, tmp_path) -> None:
    gen = generate(tmp_path / "gen.mbox", 40)
    import_mbox(app, "blog", gen.path)
    override = app.config.root / "templates" / "archive" / "message.html"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text("{{ target }} {{ '%05d' % number if number else 'post' }} {{ url }}\n")
    Archive(app).render_full()
    for mid, parent in gen.parent.items():
        page = (list_dir(app) / "msgid" / urls.msgid_segment(mid) / "index.html").read_text()
        if parent is None:
            assert " post " in page
        else:
            number = int(page.split()[1])
            assert page.split()[0].endswith(f"#c{number}") and page.split()[2].endswith(
                f"#c{number}")
            assert f"{number:05d}" == page.split()[1]


def test_short_dates_as_babel_formats_them() -> None:
    import random
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo
    from babel.dates import format_datetime
    from listserver.i18n import SHORT_FORMATS, Dates

    class Lst:
        language, tz = "nb", ZoneInfo("Europe/Oslo")
    dates, rnd = Dates(Lst()), random.Random(3)  # type: ignore[arg-type]
    start = datetime(1995, 1, 1, tzinfo=timezone.utc)
    for _ in range(2000):  # summer and winter time, and the hours they change
        value = start + timedelta(minutes=rnd.randrange(40 * 365 * 24 * 60))
        assert dates.short(value) == format_datetime(value, SHORT_FORMATS["nb"],
                                                     tzinfo=Lst.tz, locale="nb")


def test_mbox_escaping_unchanged() -> None:
    import io
    from listserver.mbox import write_message
    for raw in (b"From: a\r\n\r\nFrom here\r\n>From there\r\nx From y\r\n", b"Subject: s\n\nok\n"):
        out = io.BytesIO()
        write_message(out, raw, "a@b", None)
        body = out.getvalue().split(b"\n", 1)[1]
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        expected = b"\n".join(b">" + l if l.lstrip(b">").startswith(b"From ") else l
                              for l in lines)
        assert body == (expected if expected.endswith(b"\n") else expected + b"\n") + b"\n"
