"""Writes the settings tables of docs/configuration.md from the declarations.

Each table stands between ``<!-- markdown_table("<group>") -->`` and
``<!-- end of markdown_table -->``: the settings of one group — the core's
(:class:`otel_luna.settings.Settings`), ``otel-luna serve``'s
(:class:`otel_luna.serve.ServeSettings`) and those of every installed sink — as
:func:`otel_luna.settings.describe` lists them.

    python docs/generate_configuration.py          # rewrite docs/configuration.md
    python docs/generate_configuration.py --check  # exit 1 if it is stale (tests do this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from otel_luna.serve import ServeSettings
from otel_luna.settings import Row, Settings, describe

DOC = Path(__file__).parent / "configuration.md"

#: A table in the document: its group, then what stands there now.
_TABLE = re.compile(
    r'(<!-- markdown_table\("([^"]+)"\) -->\n)(.*?)(<!-- end of markdown_table -->)', re.S
)


def rows() -> list[Row]:
    """Every setting the document lists: the core's, serve's, then the sinks'."""
    return describe(Settings, ServeSettings)


def markdown_table(group: str) -> str:
    """The table of ``group``'s settings as ``docs/configuration.md`` shows it."""
    lines = [
        "| environment variable | `[monitoring]` key | default | accepts | what it is |",
        "|---|---|---|---|---|",
    ]
    for row in rows():
        if row.group == group:
            default = "*(none)*" if row.default is None else f"`{row.default}`"
            doc = row.doc.replace("|", "\\|")
            lines.append(f"| `{row.env}` | `{row.toml}` | {default} | {row.accepts} | {doc} |")
    return "\n".join(lines) + "\n"


def generated(text: str) -> str:
    """``text`` (the document) with every table made anew."""
    return _TABLE.sub(lambda found: found[1] + markdown_table(found[2]) + found[4], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = generated(text)
    if new == text:
        return 0
    if args.check:
        print(f"{DOC} is stale: run python {Path(__file__).name}", file=sys.stderr)
        return 1
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
