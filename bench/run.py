"""`make bench`: run every workload, bounded and on loopback only, and print one table.

Each figure is printed next to a reference measured in the same run, with the ratio.
Options: --count N (messages per inbound run, default 20000), --only NAME[,NAME],
--postgresql URL (run listserver on PostgreSQL instead of SQLite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import Row, print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--only", default="")
    parser.add_argument("--postgresql", default=None)
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    rows: list[Row] = []
    if not only or "inbound" in only:
        import inbound
        rows += inbound.run(args.count, args.postgresql)
    print_table(rows)


if __name__ == "__main__":
    main()
