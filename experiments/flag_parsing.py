"""Flag parsing for the command-line tools: a bad flag is one line and exit status 2
(absl prints its whole usage, or `FATAL Flags parsing error`, and argparse its usage
before the error), and asked-for help is a success, status 0 (absl ends it with 1, which
stops `set -e` scripts)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from absl import flags

from rnnreg_jax.command_line import (  # noqa: F401 - the tools' parser and remedies
    DATA_DIR_REMEDY,
    NO_FILE_REMEDY,
    ArgumentParser,
)

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


def refuse_empty(values: Mapping[str, tuple[str | None, str]]) -> None:
    """Exit 2 with one line for the first flag given an empty value (`--workdir=$DIR`
    with DIR unset), which the tools took as left out. `values`: flag name -> (its value,
    what to pass instead, as words after "empty; ")."""
    for name, (value, remedy) in values.items():
        if value == "":
            print(f"error: --{name} is empty; {remedy}.", file=sys.stderr)
            sys.exit(2)
