"""Write docs/cli.md, every command and flag of ``edgeskip``, from the parser itself.

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 when docs/cli.md is out of date

The reference is the parser's own help text, so it cannot drift from the code; a test
(tests/test_command_line.py) fails when the file is stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the file is the same on every terminal


def reference() -> str:
    """The text of docs/cli.md."""
    os.environ["COLUMNS"] = WIDTH
    from edgeskip.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["# Every command and flag", "",
             "[Back to the README](../README.md). Written by `python scripts/cli_reference.py` from the parser "
             "itself (a test fails when it is stale); `edgeskip COMMAND --help` prints the same.", "",
             "A command that takes a bundle takes it as `BUNDLE` or `--bundle BUNDLE`; without one it uses the "
             "bundle in the current folder (the folder itself, or the one bundle directly in it, in `bundles/` or "
             "in `edgeskip-quickstart/`), else the last one `edgeskip export` or `edgeskip quickstart` wrote, and "
             "says which. Every command takes `-q` / `--quiet`, `--no-progress` and `-v`; progress bars are drawn "
             "only when standard error is a terminal (`EDGESKIP_PROGRESS=always` or `never` overrides).", "",
             "| command | what it does |", "|---|---|"]
    parts += [f"| [`{name}`](#edgeskip-{name}) | {text} |" for name, (text, _) in COMMANDS.items()]
    parts += ["", "```", parser.format_help().rstrip(), "```"]
    for name, p in sub.choices.items():
        parts += ["", f"## edgeskip {name}", "", "```", p.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is out of date")
    text = reference()
    if ap.parse_args().check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
