"""MkDocs hook: the CLI reference page (docs/cli.md) from the commands' own argparse parsers.

Owns: replacing the marker line in docs/cli.md with `mixmatch --help` and every command's
`--help`, taken from `mixmatch_cli.parsers()` when the site is built, so the page cannot drift
from what the commands print. Registered in mkdocs.yml under `hooks:`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = "<!-- generated: every command's --help -->"
PAGE = "cli.md"
WIDTH = "100"       # argparse wraps help text to $COLUMNS: a fixed width gives the same page everywhere


def reference() -> str:
    """The usage of `mixmatch` and, per command, a section with its --help text."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:            # `mkdocs build` from a checkout where the project is not installed
        sys.path.insert(0, root)
    import mixmatch_cli     # lazy: only the CLI page needs it, and it imports every command module

    os.environ["COLUMNS"] = WIDTH
    parts = ["## mixmatch", "", "```text", mixmatch_cli.usage(), "```", ""]
    for name, parser in mixmatch_cli.parsers().items():
        parts += [f"## mixmatch {name}", "", "```text", parser.format_help().rstrip(), "```", ""]
        for sub, subparser in subcommands(parser).items():     # e.g. mixmatch data cifar10-npz
            parts += [f"### mixmatch {name} {sub}", "", "```text", subparser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def subcommands(parser: argparse.ArgumentParser) -> dict:
    """A command's subcommands (name -> parser), from argparse's subparsers action if it has one."""
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE}: the marker line {MARKER!r} is missing")
    return markdown.replace(MARKER, reference())
