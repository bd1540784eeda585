"""absl flag parsing for the command-line tools: a bad flag is one line and exit status 2
(absl prints its whole usage, or `FATAL Flags parsing error`), and asked-for help is a
success, status 0 (absl ends it with 1, which stops `set -e` scripts)."""

from __future__ import annotations

import sys

from absl import flags

HELP_FLAGS = frozenset({"--help", "-?", "--helpshort", "--helpfull", "--helpxml"})  # absl's


def parse_flags(argv: list[str]) -> list[str]:
    """`flags.FLAGS(argv)` as an `absl.app.run` flags parser (`flags_parser=`)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as done:
        if HELP_FLAGS.intersection(argv) and done.code == 1:
            sys.exit(0)
        raise
