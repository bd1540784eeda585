"""The published files' sha256s, and checking a data folder against them.

Every data folder is checked where it is read (`locate.dataset_dir`), not
only on download: a truncated or edited `ptb.train.txt` would otherwise
train silently on other data than the papers'. A file is compared by its
content, so `x.gz` is checked by the sha256 of what it decompresses to,
and a user may gzip or gunzip a file without breaking the check.

Hashing is done once per file version: the verdict is cached in the user
cache (`verified.json`, never in the data dir, which may be read-only),
keyed by the file's absolute path, size and modification time. A changed
file gets a new mtime and is hashed again. Folders without published
hashes (an unpacked `imdb/aclImdb/`, 50,000 reviews) are not checked.

Opting out: `verify=False` in the loaders (`--config.data.verify_checksums=False`
in the binaries), or `$RNNREG_SKIP_DATA_CHECKS=1` for a whole process tree,
which the test suite sets because its small fixture data uses the real
file names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path

from rnnreg_jax.data.errors import DataError, corrupt

SKIP_ENV = "RNNREG_SKIP_DATA_CHECKS"
CACHE_NAME = "verified.json"
_CHUNK = 1 << 20

# sha256 of each file's content, from the PROVENANCE.md of its folder in the data dir.
_PTB_WORD = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
_PTB_CHAR = {
    "ptb.char.train.txt": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    "ptb.char.valid.txt": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    "ptb.char.test.txt": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
}
_MNIST = {  # the uncompressed idx files
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_CORNELL_AUTHORS = {  # (subj, rating): the two files the loader reads per critic
    "Dennis+Schwartz": (
        "cb26f952c091c510c786627a45a5af3fb5c87a986f9aa3eb7eef6e4ed1797a02",
        "b9057227d5b1324f49d5f402f1cad0ae472f3d130f35a24a5334ab7db6726be7",
    ),
    "James+Berardinelli": (
        "1b612ca24494cc675f5e58c1fc320501446da2ed2520a00edb3522b565640658",
        "91abefa233432a2b92a82e0cb40706bd38e48e1ce4165e7a16584a6ec1dd8ed0",
    ),
    "Scott+Renshaw": (
        "c1b0b7b80fa4161053fee1125e7fb7bfba987fcfa08a8ab525504eff4c988cec",
        "cbe4f07da184e0c68a1051503c91c2474bb23c8d6b433e57d99dc2a8ae43760c",
    ),
    "Steve+Rhodes": (
        "33ef24625d183f6f9ecf03f356e055e9ff998ac7773f48939a364e9900bbf10a",
        "bbbe28efbe998827cfe2737a25d19977091a2deea141461eb8e241ce6f5bc03d",
    ),
}
CORNELL_CRITICS = tuple(_CORNELL_AUTHORS)  # the four the data set has, sorted
_CORNELL = {
    f"scaledata/{a}/{kind}.{a}": sha
    for a, shas in _CORNELL_AUTHORS.items()
    for kind, sha in zip(("subj", "rating"), shas, strict=True)
}
# The labelled-only archive of docs/DATA.md (an .xz, so checked as stored).
_IMDB = {
    "aclImdb_labeled.tar.xz": "3e1c2c3a853e59adcb575cff17d0fd6efad3aa39ae2b9e62c5cd15024072f8e2",
}

# data-dir folder -> {path under the folder: sha256 of the file's content}
PUBLISHED: dict[str, dict[str, str]] = {
    "ptb_word": _PTB_WORD,
    "ptb_char": _PTB_CHAR,
    "mnist": _MNIST,
    "cornell_scale_v1.0": _CORNELL,
    "imdb": _IMDB,
}


def checks_skipped() -> bool:
    """Whether `$RNNREG_SKIP_DATA_CHECKS` turns the checks off for this process."""
    return os.environ.get(SKIP_ENV, "").strip().lower() not in ("", "0", "false", "no")


def content_sha256(path: Path) -> str:
    """Returns the hex sha256 of a file's bytes, of the decompressed bytes for `*.gz`."""
    h = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _cache_path() -> Path:
    from rnnreg_jax.data.locate import cache_dir  # locate imports this module

    return cache_dir() / CACHE_NAME


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}  # absent, unreadable or torn: hash again


def _write_cache(path: Path, entries: dict) -> None:
    """Replaces the cache atomically; a cache that cannot be written only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        logging.debug("Data check cache %s not written: %s", path, e)


def _stored_as(folder: Path, name: str) -> list[Path]:
    """The copies of `name` a loader may read: as is and gzipped (or gunzipped)."""
    other = name[: -len(".gz")] if name.endswith(".gz") else name + ".gz"
    return [p for p in (folder / name, folder / other) if p.is_file()]


def verify_folder(folder: Path, name: str) -> None:
    """Checks every file of data folder `name` with a published sha256 that `folder` holds.

    Missing files are left to the loaders, whose error names the file to supply.

    Args:
        folder: the folder on disk, e.g. `<data dir>/ptb_word`.
        name: its key in `PUBLISHED`; other names have nothing to check.

    Raises:
        DataError: a file's content differs from the published one; the
            message names the file and both hashes.
    """
    published = PUBLISHED.get(name)
    if not published or not folder.is_dir():
        return
    cache_path = _cache_path()
    cache = _read_cache(cache_path)
    dirty = False
    for rel, expected in published.items():
        for path in _stored_as(folder, rel):
            key = str(path.resolve())
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
            entry = cache.get(key)
            if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp:
                actual = entry[2]
            else:
                try:
                    actual = content_sha256(path)
                except (OSError, EOFError, zlib.error) as e:
                    raise corrupt("Data file", path, f"cannot be read ({e})") from None
                cache[key] = [*stamp, actual]
                dirty = True
            if actual != expected:
                if dirty:
                    _write_cache(cache_path, cache)
                raise DataError(
                    f"Data file {path} has sha256 {actual} where the published file has "
                    f"{expected}, so it was truncated or edited; restore it (docs/DATA.md), "
                    "or pass --config.data.verify_checksums=False (verify=False in the "
                    "loaders) to use it knowingly."
                )
    if dirty:
        _write_cache(cache_path, cache)
