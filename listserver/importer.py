"""``listserver import LIST MBOX``: bring in an existing archive through the live path.

Each message of the mbox (Mailman pipermail or HyperKitty, Google Groups, any mboxrd or
mboxo file, gzipped or not) is stored like live mail (``intake``) as ``source='import'``
and processed by ``process.handle`` with the same rule chain as live mail; the chain's
import rows decide what differs (``rules.Imported``): roots become posts without author
rights, nothing is held for moderators, a reply whose parent comes later in the file waits
for it. The publish hooks run as for live mail: a hook that must not act on history (the
fan-out to subscribers) checks ``message.source == 'import'``.

* Streaming, flat memory: the file is read one message at a time (``mbox.MboxReader``)
  and committed in batches of ``BATCH`` messages, each stored and processed in one
  transaction (one fsync per batch). A batch is stored with one INSERT and one SELECT of
  the new ids, and the rows it loads stay in the session until it commits (a reply's
  post, say, is not read again). A message whose processing raises is parked as
  ``failed``: its batch is redone with a savepoint per message, which keeps the rest.
* Safe to run twice: the same Message-ID with the same content is stored once, and a
  stored message is processed only while it is still queued.
* At the end, replies still waiting for a parent that never came are processed once more
  as the import's last word: under a parent that arrived meanwhile, else a post.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from .addresses import list_address
from .intake import Incoming, insert_rows
from .intake import _row as row_for
from .mbox import MboxReader
from .models import Message, utcnow
from .parse import content_digest, header_message_id
from .process import handle

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger("listserver.import")

BATCH = 500
_PIPERMAIL_FROM = re.compile(rb"^From: ([^\s@<>]+) at ([^\s@<>]+)", re.M)


@dataclass
class ImportReport:
    read: int = 0
    stored: int = 0          # new messages (the rest were already there)
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    waiting: int = 0         # replies waiting for a parent later in the file

    @property
    def duplicates(self) -> int:
        return self.read - self.stored

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds else 0.0
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        return (f"{self.read} message(s) read, {self.stored} new, {self.duplicates} already "
                f"there; {parts or 'nothing to publish'} ({self.seconds:.1f}s, "
                f"{rate:.0f} messages/s)")


def normalise(raw: bytes) -> bytes:
    """Undo pipermail's address obfuscation in From ("kari at example.net")."""
    end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    fixed, n = _PIPERMAIL_FROM.subn(rb"From: \1@\2", head, count=1)
    return fixed + raw[len(head):] if n else raw


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, out: IO[str] | None = None) -> None:
        self.total = max(total, 1)
        self.out = out or sys.stderr
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, position: int, report: ImportReport, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < 0.2:
            return
        self.shown = now
        share = min(position / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = report.read / max(now - self.started, 1e-6)
        self.out.write(f"\r[{bar:<30}] {share:4.0%} {report.read} messages, "
                       f"{report.stored} new, {rate:.0f}/s ")
        self.out.flush()

    def done(self, report: ImportReport) -> None:
        self.update(self.total, report, force=True)
        self.out.write("\n")
        self.out.flush()


def import_mbox(app: App, list_name: str, path: Path, *, progress: bool = False,
                batch: int = BATCH) -> ImportReport:
    lst = app.list(list_name)
    to = list_address(app.config, lst.name)
    report = ImportReport()
    started = time.monotonic()
    bar: Progress | None = None
    with MboxReader(path) as reader:
        bar = Progress(reader.size) if progress else None
        items: list[Incoming] = []
        for message in reader:
            report.read += 1
            items.append(Incoming(lst.name, normalise(message.raw), message.sender, [to],
                                  "import"))
            if len(items) >= batch:
                _batch(app, items, report)
                items = []
                if bar:
                    bar.update(reader.position, report)
        if items:
            _batch(app, items, report)
    while app.db.call(_final_pass, app, lst.name, report, batch):
        pass
    report.seconds = time.monotonic() - started
    if bar:
        bar.done(report)
    log.info("import of %s into %s: %s", path, lst.name, report.summary())
    return report


def _batch(app: App, items: list[Incoming], report: ImportReport) -> None:
    """Store and process a batch in one transaction; if anything in it raises, do it again
    with a savepoint per message, so that only the failing message is parked."""
    for careful in (False, True):
        part = ImportReport(waiting=report.waiting)
        try:
            app.db.call(_store_and_process, app, items, part, careful)
        except Exception:
            if careful:
                raise
            log.info("a message of this batch failed; processing it one by one")
            continue
        report.stored += part.stored
        report.waiting = part.waiting
        for outcome, n in part.outcomes.items():
            report.outcomes[outcome] = report.outcomes.get(outcome, 0) + n
        return


def _new_items(session: Session, items: list[Incoming]) -> list[Incoming]:
    """The batch's messages that are not stored yet (one query; a re-run skips fast)."""
    keys = [(header_message_id(i.raw), content_digest(i.raw)) for i in items]
    ids = list({mid for mid, _ in keys if mid})
    known: set[tuple[str | None, str]] = set()
    for start in range(0, len(ids), 500):
        rows = session.execute(select(Message.message_id, Message.digest).where(
            Message.list_name == items[0].list_name,
            Message.message_id.in_(ids[start:start + 500])))
        known.update((mid, digest) for mid, digest in rows)
    return [i for i, key in zip(items, keys) if key not in known]


def _keep_loaded(session: Session) -> None:
    """Keep every object this transaction loads or adds alive until it ends.

    The session's identity map holds its objects weakly: without this, a message row or
    a post that processing looks at again (a reply's post, a thread's root) has been
    collected meanwhile and costs another SELECT. One batch's rows are few.
    """
    kept: list[object] = session.info.setdefault("import_kept", [])
    if kept:
        return

    def keep(_session: Session, instance: object) -> None:
        kept.append(instance)
    kept.append(object())
    event.listen(session, "loaded_as_persistent", keep)
    event.listen(session, "pending_to_persistent", keep)


def _store(session: Session, items: list[Incoming], domain: str) -> list[int]:
    """Store the messages (one INSERT); their row ids in order, with one SELECT."""
    rows = [row_for(item, domain, utcnow()) for item in items]
    insert_rows(session, rows)
    found: dict[tuple[str, str], int] = {}
    mids = list({str(r["message_id"]) for r in rows})
    for start in range(0, len(mids), 500):
        for pk, mid, digest in session.execute(select(
                Message.id, Message.message_id, Message.digest).where(
                Message.list_name == items[0].list_name,
                Message.message_id.in_(mids[start:start + 500]))):
            found[(mid, digest)] = pk
    return [found[(str(r["message_id"]), str(r["digest"]))] for r in rows]


def _store_and_process(session: Session, app: App, items: list[Incoming],
                       report: ImportReport, careful: bool) -> None:
    fresh = _new_items(session, items)
    if not fresh:
        return
    _keep_loaded(session)
    ids = list(dict.fromkeys(_store(session, fresh, app.config.domain)))
    queued = {m.id: m for m in session.execute(select(Message).where(
        Message.id.in_(ids), Message.state == "queued",
        Message.source == "import")).scalars()}  # loads them all: one query, not one each
    report.stored += len(queued)
    for pk in ids:
        if pk in queued:
            _process(session, app, pk, report, careful=careful)
            if report.waiting:
                _released(session, app, report, before=pk, careful=careful)
    if report.waiting:
        _released(session, app, report, careful=careful)


def _released(session: Session, app: App, report: ImportReport, before: int | None = None,
              careful: bool = True) -> None:
    """Process imported replies that a publication released (queued again), oldest first."""
    while True:
        query = select(Message.id).where(Message.state == "queued",
                                         Message.source == "import")
        if before is not None:
            query = query.where(Message.id < before)
        pk = session.execute(query.order_by(Message.id).limit(1)).scalar()
        if pk is None:
            return
        report.waiting = max(0, report.waiting - 1)
        _process(session, app, pk, report, careful=careful)


def _final_pass(session: Session, app: App, list_name: str, report: ImportReport,
                batch: int) -> int:
    """Replies still waiting: placed where they now can be, else posts. Returns how many."""
    waiting = list(session.execute(select(Message.id).where(
        Message.list_name == list_name, Message.source == "import",
        Message.state == "held", Message.outcome == "held").order_by(Message.id)
        .limit(batch)).scalars())
    for pk in waiting:
        message = session.get(Message, pk)
        if message is None or message.state != "held":
            continue  # released and processed meanwhile
        message.state = "queued"
        report.waiting = max(0, report.waiting - 1)
        _process(session, app, pk, report, final=True)
        _released(session, app, report)
    return len(waiting)


def _process(session: Session, app: App, pk: int, report: ImportReport,
             final: bool = False, careful: bool = True) -> None:
    message = session.get(Message, pk)
    if message is None:
        return
    notes = {"import": "final" if final else "running"}
    if not careful:  # the whole batch is done again, carefully, if this raises
        handle(app, session, message, notes)
    else:
        savepoint = session.begin_nested()
        try:
            handle(app, session, message, notes)
            savepoint.commit()
        except Exception:
            savepoint.rollback()
            error = traceback.format_exc()
            log.error("importing message %s failed, parked:\n%s", pk, error)
            message = session.get(Message, pk)
            if message is not None:
                message.state = "failed"
                message.error = error
                message.attempts += 1
                message.processed_at = app.now()
            report.count("failed")
            return
    if message.state == "done":  # a reply that waits is counted when it is placed
        report.count(message.outcome or "done")
    elif message.state == "held":
        report.waiting += 1
