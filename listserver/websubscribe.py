"""The subscription pages of the HTTP server: the subscribe form, confirmation links and
RFC 8058 one-click unsubscribe.

A GET never changes anything: mail scanners and link previews fetch every URL in a mail,
so the GET of a confirmation or unsubscribe link shows a page with a button, and only the
POST behind the button acts. ``POST /unsubscribe/TOKEN`` with the body
``List-Unsubscribe=One-Click`` (what Gmail, Yahoo and Outlook send) unsubscribes at once
and answers 200: no redirect, no cookie, no second step. The token is a signed one
(``tokens.signed``), so links in mail sent months ago still work and cannot be forged.

The form is ``/subscribe/LIST`` (or ``/subscribe`` with a ``list`` field), with the fields
``address``, ``name`` and ``mode``; the archive's pages post to it. It answers the same page
whatever the address's state ("check your mail"): whether it was already subscribed is
told by mail, to the address itself, so the form does not reveal who is subscribed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import subscriptions, tokens
from .config import MODES, ListConfig
from .fanout import UNSUBSCRIBE
from .models import Token
from .web import Request, Response, route

if TYPE_CHECKING:
    from .app import App

ONE_CLICK = re.compile(rb'List-Unsubscribe(=|"\s+)One-Click')


def page(app: App, lst: ListConfig | None, template: str, status: int = 200,
         **values: Any) -> Response:
    lang = lst.language if lst is not None else "en"
    extra = subscriptions.values(app, lst) if lst is not None else {}
    html = app.templates.get_template(f"web/{template}.{lang}.html").render(
        lst=lst, config=app.config, lang=lang, **extra, **values)
    return Response(status, html.encode("utf-8"),
                    headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def _field(request: Request, name: str) -> str:
    return (request.form.get(name) or [""])[0].strip()


def _list(app: App, request: Request) -> ListConfig | None:
    name = request.match["list"] or _field(request, "list")
    if not name and len(app.config.lists) == 1:
        name = next(iter(app.config.lists))
    return app.config.lists.get(name)


SUBSCRIBE = r"/subscribe(?:/(?P<list>[a-z0-9][a-z0-9._-]*))?"


@route("GET", SUBSCRIBE)
def subscribe_form(app: App, request: Request) -> Response:
    lst = _list(app, request)
    if lst is None:
        return page(app, None, "result", 404, outcome="no-list")
    return page(app, lst, "subscribe", modes=MODES, mode=lst.default_mode)


@route("POST", SUBSCRIBE)
def subscribe(app: App, request: Request) -> Response:
    lst = _list(app, request)
    if lst is None:
        return page(app, None, "result", 404, outcome="no-list")
    address = _field(request, "address") or _field(request, "email")
    name = _field(request, "name")[:200]
    mode = _field(request, "mode")
    mode = mode if mode in MODES else lst.default_mode
    if not subscriptions.valid_address(address):
        return page(app, lst, "subscribe", 400, modes=MODES, mode=mode, name=name,
                    address=address, error=True)

    def run(session: Session) -> None:
        outcome, sub = subscriptions.request_subscription(app, session, lst, address, name,
                                                          mode)
        if outcome == "already":  # told by mail, at most once a day
            subscriptions.notify(app, session, lst, sub.address, "subscribe_already",
                                 f"web:{app.now():%Y-%m-%d}", sub=sub)
    app.db.call(run)
    return page(app, lst, "result", outcome="check-mail",
                address=subscriptions.normalise(address))


def _confirmation(app: App, session: Session, token: str) -> tuple[Any, str, str]:
    """(token row or None, why not, its list) of a confirmation link."""
    try:
        row = tokens.find(session, app.secret, token, kinds=("subscribe", "unsubscribe"),
                          now=app.now())
    except tokens.TokenError as exc:
        if exc.why == "unknown":
            return None, exc.why, ""
        known = session.execute(select(Token.list_name).where(
            Token.token == token.lower())).scalar_one_or_none()
        return None, exc.why, known or ""
    return row, "", row.list_name


def _failed(app: App, why: str, list_name: str) -> Response:
    return page(app, app.config.lists.get(list_name), "result",
                404 if why == "unknown" else 410, outcome=why)


@route("GET", r"/confirm/(?P<token>[A-Za-z0-9]{4,64})")
def confirm_page(app: App, request: Request) -> Response:
    row, why, list_name = app.db.call(lambda s: _confirmation(app, s, request.match["token"]))
    lst = app.config.lists.get(list_name)
    if row is None or lst is None:
        return _failed(app, why or "unknown", list_name)
    return page(app, lst, "button", action=request.path, what=row.kind,
                address=row.address)


@route("POST", r"/confirm/(?P<token>[A-Za-z0-9]{4,64})")
def confirm(app: App, request: Request) -> Response:
    def run(session: Session) -> tuple[str, str, str, str]:
        row, why, list_name = _confirmation(app, session, request.match["token"])
        lst = app.config.lists.get(list_name)
        if row is None or lst is None:
            return why or "unknown", list_name, "", ""
        outcome, sub = subscriptions.confirm(app, session, lst, row)
        return outcome, list_name, row.address, sub.mode if sub is not None else ""
    outcome, list_name, address, mode = app.db.call(run)
    if not address:
        return _failed(app, outcome, list_name)
    return page(app, app.config.lists[list_name], "result", outcome=outcome, address=address,
                mode=mode)


def _signed(app: App, session: Session, token: str) -> tuple[ListConfig | None, str, str]:
    sub = subscriptions.from_signed(app, session, None, token.lower(), UNSUBSCRIBE)
    lst = app.config.lists.get(sub.list_name) if sub is not None else None
    if sub is None or lst is None:
        return None, "unknown", ""
    return lst, sub.state, sub.address


@route("GET", r"/unsubscribe/(?P<token>[A-Za-z0-9]{4,64})")
def unsubscribe_page(app: App, request: Request) -> Response:
    lst, state, address = app.db.call(lambda s: _signed(app, s, request.match["token"]))
    if lst is None:
        return page(app, None, "result", 404, outcome="unknown")
    if state == "unsubscribed":
        return page(app, lst, "result", outcome="not-subscribed", address=address)
    return page(app, lst, "button", action=request.path, what="one-click", address=address)


@route("POST", r"/unsubscribe/(?P<token>[A-Za-z0-9]{4,64})")
def unsubscribe(app: App, request: Request) -> Response:
    if not ONE_CLICK.search(request.body):
        return Response(400, b"POST List-Unsubscribe=One-Click to unsubscribe\n",
                        "text/plain; charset=utf-8")

    def run(session: Session) -> tuple[ListConfig | None, str, str]:
        token = request.match["token"].lower()
        sub = subscriptions.from_signed(app, session, None, token, UNSUBSCRIBE)
        lst = app.config.lists.get(sub.list_name) if sub is not None else None
        if sub is None or lst is None:
            return None, "unknown", ""
        done = subscriptions.unsubscribe(app, session, sub)
        return lst, "unsubscribed" if done else "not-subscribed", sub.address
    lst, outcome, address = app.db.call(run)
    if lst is None:
        return page(app, None, "result", 404, outcome="unknown")
    return page(app, lst, "result", outcome=outcome, address=address)


def install(app: App) -> None:
    """The routes register themselves when this module is imported."""
