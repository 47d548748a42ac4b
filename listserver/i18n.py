"""Languages of the archive: gettext catalogues (Babel) and dates in a list's time zone.

The catalogue of a language is ``locale/LANG/LC_MESSAGES/messages.po``, compiled in memory
when first used: nothing to build, and never a stale ``.mo``. ``make translations``
extracts the strings of the templates and updates the ``.po`` files.

Each language gets its own Jinja2 environment on the app's loader (site templates, then
built-in ones) with the i18n extension bound to that language's catalogue.
"""

from __future__ import annotations

import io
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

from .config import ListConfig

LOCALE_DIR = Path(__file__).parent / "locale"

# Comment headers as on the original blog ("#1 Kirstine 09-03-2018 09:02").
SHORT_FORMATS = {"nb": "dd-MM-yyyy HH:mm", "en": "d MMM yyyy HH:mm"}


@lru_cache(maxsize=None)
def translations(language: str) -> NullTranslations:
    po = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    if not po.exists():
        return NullTranslations()
    with open(po, "rb") as fh:
        catalog = read_po(fh, locale=language)
    buf = io.BytesIO()
    write_mo(buf, catalog, use_fuzzy=False)
    buf.seek(0)
    return Translations(buf)


def environment(loader: jinja2.BaseLoader, language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True, lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore
    return env


_NUMERIC = {"dd": "%d", "MM": "%m", "yyyy": "%Y", "HH": "%H", "mm": "%M"}


def strftime_pattern(pattern: str) -> str | None:
    """The strftime pattern that formats like the CLDR ``pattern``, if it is made only of
    zero-padded numeric fields (dd-MM-yyyy HH:mm) and punctuation; else None."""
    import re
    out = []
    for match in re.finditer(r"([a-zA-Z])\1*|[^a-zA-Z']+", pattern):
        text = match.group(0)
        if text[0].isalpha():
            if text not in _NUMERIC:
                return None
            out.append(_NUMERIC[text])
        else:
            out.append(text.replace("%", "%%"))
    return "".join(out) if "".join(m.group(0) for m in re.finditer(
        r"([a-zA-Z])\1*|[^a-zA-Z']+", pattern)) == pattern else None


class Dates:
    """Date formatting for one list: its time zone and its language."""

    CACHE = 20_000   # formatted dates kept (index pages show the same posts again and again)

    def __init__(self, lst: ListConfig) -> None:
        self.tz = lst.tz
        self.locale = lst.language
        self.short_format = SHORT_FORMATS.get(lst.language, SHORT_FORMATS["en"])
        self._cache: dict[tuple[str, datetime], str] = {}
        self._short_strftime = strftime_pattern(self.short_format)

    def _cached(self, kind: str, value: datetime, make: Any) -> str:
        key = (kind, value)
        text = self._cache.get(key)
        if text is None:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            text = self._cache[key] = make()
        return text

    def local(self, value: datetime) -> datetime:
        return value.astimezone(self.tz)

    def short(self, value: datetime) -> str:
        # Every comment shows one: the numeric pattern by strftime, the rest by Babel.
        if self._short_strftime is not None:
            return self.local(value).strftime(self._short_strftime)
        return self._cached("short", value, lambda: format_datetime(
            value, self.short_format, tzinfo=self.tz, locale=self.locale))

    def long(self, value: datetime) -> str:
        return self._cached("long", value, lambda: format_date(
            self.local(value), "long", locale=self.locale))

    def month(self, value: datetime) -> str:
        return self._cached("month", value, lambda: format_date(
            self.local(value), "LLLL y", locale=self.locale))

    def iso(self, value: datetime) -> str:
        return self.local(value).isoformat(timespec="seconds")

    def filters(self) -> dict[str, Any]:
        return {"short_date": self.short, "long_date": self.long, "month_name": self.month,
                "iso_date": self.iso}
