"""argparse for the command-line tools (the data CLI here, the experiment binaries'
evaluate, generate, curves and report): a refused command line in one line and exit
status 2, where argparse prints its whole usage first."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

# What to pass instead of an empty path flag (`--data_dir=` with its variable unset),
# in the words of the tools that refuse one.
DATA_DIR_REMEDY = ("pass the data folder, or leave the flag out for $RNNREG_DATA_DIR, then "
                   "the download cache")
NO_FILE_REMEDY = "pass a file, or leave the flag out for none"


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose refusal of the command line is one line."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help.", file=sys.stderr)
        sys.exit(2)
