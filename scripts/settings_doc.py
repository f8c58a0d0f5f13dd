"""Rewrite the settings table of docs/settings.md from the code: `.venv/bin/python scripts/settings_doc.py`.

The table is what `pulse config` prints (pulse.cli.settings_table, built from the Settings fields), so the
reference cannot drift from the defaults and descriptions in pulse/settings.py; tests/unit/test_docs.py fails
when the file is not current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "settings.md"
#: the generated part of docs/settings.md; the prose around it is written by hand
BLOCK = re.compile(r"(<!-- settings-table:start -->\n).*?(\n<!-- settings-table:end -->)", re.S)


def render(text: str) -> str:
    """``text`` (docs/settings.md) with its generated block replaced by the table of the current code."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from pulse.cli import settings_table

    if not BLOCK.search(text):
        raise ValueError(f"{DOC}: no <!-- settings-table:start/end --> markers")
    return BLOCK.sub(lambda m: m.group(1) + settings_table() + m.group(2), text)


def main() -> int:
    before = DOC.read_text()
    after = render(before)
    DOC.write_text(after)
    print(f"{DOC.relative_to(ROOT)}: {'rewritten' if after != before else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
