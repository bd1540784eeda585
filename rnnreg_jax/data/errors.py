"""The single error type of the data package and careful file readers.

Every problem with a data file (missing, empty, truncated, corrupt, wrong
encoding) becomes a `DataError` whose message is one sentence naming the file
and the fix, so command-line tools can print it without a traceback.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

FIX = "pass --data_dir or set RNNREG_DATA_DIR to a folder laid out as in docs/DATA.md"
REFETCH = "delete it and download or copy it again (see docs/DATA.md)"


class DataError(Exception):
    """A data set cannot be found or read; the message is one sentence with the fix."""


def missing(what: str, path: os.PathLike | str) -> DataError:
    """Returns the error for a missing file or folder."""
    return DataError(f"{what} {path} is missing; {FIX}.")


def corrupt(what: str, path: object, problem: str) -> DataError:
    """Returns the error for a file that exists but cannot be used (`path`: shown as
    `str` shows it)."""
    problem = " ".join(str(problem).split())  # keep the message on one line
    return DataError(f"{what} {path} {problem}; {REFETCH}.")


def find_file(folder: Path, names: list[str], what: str) -> Path:
    """Returns the first of `names` that exists in `folder`.

    Args:
        folder: the data set's folder.
        names: accepted file names in order of preference (e.g. `x.txt`, `x.txt.gz`).
        what: a few words for the error message, e.g. "PTB file".

    Raises:
        DataError: none of the names exists (the message names the first).
    """
    if not folder.is_dir():
        raise missing(f"{what.split()[0]} folder", folder)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise missing(what, folder / names[0])


def read_bytes(path: Path, what: str) -> bytes:
    """Reads a whole file, transparently gunzipping `*.gz`.

    Raises:
        DataError: the file is missing, empty, or a truncated/corrupt gzip.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise missing(what, path) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise corrupt(what, path, f"is truncated or not a valid gzip file ({e})") from None
    except OSError as e:
        raise corrupt(what, path, f"cannot be read ({e.strerror or e})") from None
    if not data:
        raise corrupt(what, path, "is empty")
    return data


def decode_utf8(data: bytes, path: os.PathLike | str, what: str) -> str:
    """Decodes UTF-8 strictly; invalid bytes become a DataError naming the offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise corrupt(what, path, f"has non-UTF-8 bytes at byte offset {e.start}") from None


def read_text(path: Path, what: str) -> str:
    """Reads a UTF-8 text file (plain or `.gz`).

    Raises:
        DataError: missing, empty, truncated gzip or non-UTF-8 bytes.
    """
    return decode_utf8(read_bytes(path, what), path, what)
