"""Reading and writing mbox files, one message at a time.

``read_mbox`` streams: it never holds more than the message it is reading, whatever the
size of the file (``mailbox.mbox`` builds a table of contents of the whole file first).
A message starts at a ``From `` line at the start of the file or after an empty line, as
mbox writers (Mailman's pipermail, HyperKitty, Google Takeout, mutt) produce them. Lines
escaped as ``>From `` (mboxrd) lose one ``>``. Gzipped files (HyperKitty's ``.mbox.gz``,
pipermail's ``.txt.gz``) are read transparently.

``write_message`` writes mboxrd: any line matching ``>*From `` gets one more ``>``, so a
reader of either dialect gets the message back.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, BinaryIO

_ESCAPED_FROM = re.compile(rb"^>+From ")
_NEEDS_ESCAPE = re.compile(rb"^>*From ")


@dataclass
class MboxMessage:
    sender: str   # the address on the From_ line ('' if it has none)
    raw: bytes


class MboxReader:
    """Iterate the messages of an mbox file; ``position`` and ``size`` are for progress."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "rb")
        self.size = path.stat().st_size
        stream: IO[bytes] = self._file
        if self._file.read(2) == b"\x1f\x8b":
            self._file.seek(0)
            stream = gzip.GzipFile(fileobj=self._file, mode="rb")
        else:
            self._file.seek(0)
        self._stream = io.BufferedReader(stream, 1 << 16) if stream is not self._file else stream

    @property
    def position(self) -> int:
        """Bytes of the file read so far (compressed bytes for a gzipped file)."""
        return self._file.tell()

    def __iter__(self) -> Iterator[MboxMessage]:
        lines: list[bytes] = []
        sender: str | None = None
        previous_blank = True
        for line in self._stream:
            if previous_blank and line.startswith(b"From "):
                if sender is not None:
                    yield _message(sender, lines)
                sender = _from_line_sender(line)
                lines = []
                previous_blank = False
                continue
            previous_blank = line in (b"\n", b"\r\n")
            if sender is None:
                continue  # junk before the first From_ line
            if line.startswith(b">") and _ESCAPED_FROM.match(line):
                line = line[1:]
            lines.append(line)
        if sender is not None:
            yield _message(sender, lines)

    def close(self) -> None:
        self._stream.close()
        self._file.close()

    def __enter__(self) -> MboxReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _from_line_sender(line: bytes) -> str:
    parts = line[5:].split(None, 1)
    sender = parts[0].decode("ascii", "replace") if parts else ""
    return sender if "@" in sender else ""


def _message(sender: str, lines: list[bytes]) -> MboxMessage:
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines.pop()  # the separator before the next From_ line
    return MboxMessage(sender, b"".join(lines))


def read_mbox(path: Path) -> Iterator[MboxMessage]:
    with MboxReader(path) as reader:
        yield from reader


def write_message(out: IO[bytes], raw: bytes, sender: str = "",
                  when: datetime | None = None) -> None:
    """Append one message in mboxrd format (a From_ line, escaped body, an empty line)."""
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(
        "%a %b %d %H:%M:%S %Y")
    out.write(f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode("ascii", "replace"))
    data = raw.replace(b"\r\n", b"\n")
    if b"From " in data:  # (rare: most messages need no line looked at)
        data = b"\n".join(b">" + line if _NEEDS_ESCAPE.match(line) else line
                          for line in data.split(b"\n"))
    out.write(data if data.endswith(b"\n") else data + b"\n")
    out.write(b"\n")
