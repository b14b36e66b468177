"""Rewrite the README's settings table from ``Settings`` (service/settings_doc.py).

python scripts/settings_table.py          # rewrite README.md in place
python scripts/settings_table.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from service.settings_doc import render_table, stale_meanings, with_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    args = parser.parse_args()
    if stale_meanings():
        print(f"MEANINGS lists settings that no longer exist: {stale_meanings()}", file=sys.stderr)
        return 1
    text = README.read_text()
    updated = with_table(text)
    if args.check:
        if updated != text:
            print("README.md's settings table is out of date: run scripts/settings_table.py")
            return 1
        return 0
    README.write_text(updated)
    print(f"{README.name}: {render_table().count(chr(10)) - 1} settings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
