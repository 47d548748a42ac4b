"""`make bench`: run every workload, bounded and on loopback only, and print one table.

Each figure is printed next to a reference measured in the same run, with the ratio.
Options: --count N (messages per inbound run, default 20000), --only NAME[,NAME] (inbound,
fanout, import, archive), --postgresql URL (run listserver on PostgreSQL instead of
SQLite), --archive N (messages in the generated archive for import and archive, default
10000), --subscribers N (fan-out, default 100000), --dkim-subscribers N (the fan-out run
with DKIM signing, default 100000), --full (the 100,000-message archive too: minutes more).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import Row, print_table, workdir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--only", default="")
    parser.add_argument("--postgresql", default=None)
    parser.add_argument("--archive", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--dkim-subscribers", type=int, default=100_000)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    unknown = only - {"inbound", "fanout", "import", "archive"}
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    rows: list[Row] = []

    def show(new: list[Row]) -> None:  # as we go: a long run shows its figures early
        rows.extend(new)
        print_table(new, file=sys.stderr)

    if not only or "inbound" in only:
        import inbound
        show(inbound.run(args.count, args.postgresql))
    if not only or "fanout" in only:
        import fanout
        show(fanout.run(args.subscribers, args.dkim_subscribers))
    if not only or only & {"import", "archive"}:
        import archive
        import importer
        sizes = [args.archive] + ([100_000] if args.full and args.archive != 100_000 else [])
        for size in sizes:
            with workdir() as tmp:  # removed at the end, with all it holds
                corpus = importer.generate(Path(tmp), size)
                if not only or "import" in only:
                    show(importer.run(corpus))
                else:
                    importer.import_corpus(corpus)
                if not only or "archive" in only:
                    show(archive.run(corpus))
    print_table(rows)


if __name__ == "__main__":
    main()
