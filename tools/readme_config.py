#!/usr/bin/env python3
"""Generate the README's configuration reference from the ``Config`` dataclass.

The table sits between two markers in README.md; ``--check`` fails (exit 1) when it differs
from the dataclass (a field added, removed, renamed or re-commented), so it cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def table() -> str:
    from emovit.config import PRESETS, field_docs

    lines = ["| field | type | kaggle default | demo preset | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, type_name, default, comment in field_docs():
        demo = repr(PRESETS["demo"][name]) if name in PRESETS["demo"] else ""
        lines.append(f"| `{name}` | {type_name} | `{default}` | {f'`{demo}`' if demo else ''} | {comment} |")
    return "\n".join(lines)


def render(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(
                "readme_config: README.md's configuration reference is stale; run `python -m tools.readme_config`",
                file=sys.stderr,
            )
            return 1
        print("readme_config: README.md configuration reference is up to date")
        return 0
    README.write_text(new, encoding="utf-8")
    print("readme_config: updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
