"""Notices: the short mails listserver writes itself (confirmations, held-message notices).

Each is a Jinja2 text template ``email/NAME.LANG.txt`` whose first line is the subject.
Notices carry ``Auto-Submitted: auto-generated`` so that well-behaved auto-responders
leave them alone, and go out through the outbox like everything else.
"""

from __future__ import annotations

import email.utils
from email.charset import QP, Charset
from email.header import Header
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any

from . import outbox
from .addresses import list_address
from .config import ListConfig

if TYPE_CHECKING:
    from .app import App
    from .rules import Context

UTF8_QP = Charset("utf-8")
UTF8_QP.body_encoding = QP  # readable in a raw view, unlike base64


def compose(app: App, lst: ListConfig, to: str, template: str,
            reply_to: str | None = None, **values: Any) -> bytes:
    config = app.config
    text = app.templates.get_template(f"email/{template}.{lst.language}.txt").render(
        lst=lst, config=config, **values)
    subject, _, body = text.partition("\n")
    # compat32 MIMEText: several times cheaper than EmailMessage's header registry, which
    # matters when a burst of held mail makes a notice each.
    msg = MIMEText(body.lstrip("\n"), "plain", UTF8_QP)  # type: ignore[arg-type]
    msg["From"] = email.utils.formataddr((lst.title, list_address(config, lst.name, "owner")),
                                         charset="utf-8")
    msg["To"] = to
    subject = subject.strip()
    msg["Subject"] = subject if subject.isascii() else Header(  # type: ignore[assignment]
        subject, "utf-8", header_name="Subject")
    msg["Date"] = email.utils.format_datetime(app.now())
    msg["Message-ID"] = email.utils.make_msgid("notice", domain=config.domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "list"
    msg["List-Id"] = f"<{lst.name}.{config.domain}>"
    if reply_to:
        msg["Reply-To"] = reply_to
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send(app: App, ctx_session: Any, lst: ListConfig, kind: str, ref: str, to: str,
         template: str, reply_to: str | None = None, **values: Any) -> None:
    content = compose(app, lst, to, template, reply_to=reply_to, **values)
    outbox.enqueue(ctx_session, lst.name, kind, ref, to, content,
                   list_address(app.config, lst.name, "bounces"), when=app.now())


def confirm_post(ctx: Context, token: str) -> None:
    confirm = list_address(ctx.app.config, ctx.lst.name, "confirm", token)
    send(ctx.app, ctx.session, ctx.lst, "confirm-post", f"msg:{ctx.message.id}",
         ctx.parsed.from_address, "confirm_post", reply_to=confirm, confirm=confirm,
         subject=ctx.parsed.subject)


def notify_owners_of_hold(ctx: Context) -> None:
    app, lst = ctx.app, ctx.lst
    for owner in lst.owners:
        token = app.issue_token(ctx.session, lst.name, "moderate", address=owner,
                                ref=str(ctx.message.id))
        confirm = list_address(app.config, lst.name, "confirm", token)
        send(app, ctx.session, lst, "held-notice", f"msg:{ctx.message.id}", owner,
             "held_notice", reply_to=confirm, confirm=confirm, message=ctx.message,
             parsed=ctx.parsed)
