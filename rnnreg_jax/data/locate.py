"""Where the data lives, and downloading it once into the user cache.

Resolution order: an explicit `data_dir`, else `$RNNREG_DATA_DIR`, else the
user cache (`$XDG_CACHE_HOME/rnnreg_jax` or `~/.cache/rnnreg_jax`). Only the
cache is ever written to: a data set missing there is downloaded from its
canonical source, checked against the sha256 values in `SOURCES`, unpacked to
a temporary folder and moved into place with `os.replace`, so a folder that
exists is always complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rnnreg_jax.data.arguments import check_switch
from rnnreg_jax.data.checksums import PUBLISHED, checks_skipped, verify_folder
from rnnreg_jax.data.errors import FIX, DataError

DATA_DIR_ENV = "RNNREG_DATA_DIR"
DATA_URL_ENV = "RNNREG_DATA_URL"  # base URL replacing every canonical URL's folder

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Download:
    """One remote file.

    Attributes:
        url: canonical URL; with a base URL override, `base/<last component>` is used.
        sha256: expected sha256 of the downloaded bytes, or None where unknown
            (then the extracted files are checked against `Source.file_sha256`).
        extract: `(member, destination)` pairs for a tar archive: `member` is a
            path inside the archive (a trailing `/` makes it a prefix, matched at
            any folder depth), `destination` the path under the data dir. Empty:
            the file is stored as is at `store_as`.
        store_as: destination (under the data dir) of a non-archive download.
    """

    url: str
    sha256: str | None = None
    extract: tuple[tuple[str, str], ...] = ()
    store_as: str = ""


@dataclasses.dataclass(frozen=True)
class Source:
    """How to obtain the folders of one or more data sets.

    Attributes:
        folders: data-dir folders this source creates (all at once).
        downloads: the remote files.
        file_sha256: path under the data dir -> sha256 of the extracted file;
            each must exist after unpacking and match.
    """

    folders: tuple[str, ...]
    downloads: tuple[Download, ...]
    file_sha256: dict[str, str] = dataclasses.field(default_factory=dict)


_PTB = "simple-examples/data/"
_SPLITS = ("train", "valid", "test")
_PTB_SOURCE = Source(
    folders=("ptb_word", "ptb_char"),
    downloads=(
        Download(
            url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
            extract=tuple(
                [(f"{_PTB}ptb.{s}.txt", f"ptb_word/ptb.{s}.txt") for s in _SPLITS]
                + [(f"{_PTB}ptb.char.{s}.txt", f"ptb_char/ptb.char.{s}.txt") for s in _SPLITS]
            ),
        ),
    ),
    file_sha256={f"ptb_word/{n}": sha for n, sha in PUBLISHED["ptb_word"].items()}
    | {f"ptb_char/{n}": sha for n, sha in PUBLISHED["ptb_char"].items()},
)

_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_MNIST_SHA = {  # of the .gz files, from mnist/PROVENANCE.md (= TFDS url_checksums)
    "train-images-idx3": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

SOURCES: dict[str, Source] = {
    "ptb_word": _PTB_SOURCE,
    "ptb_char": _PTB_SOURCE,
    "mnist": Source(
        folders=("mnist",),
        downloads=tuple(
            Download(url=f"{_MNIST_URL}{n}-ubyte.gz", sha256=sha, store_as=f"mnist/{n}-ubyte.gz")
            for n, sha in _MNIST_SHA.items()
        ),
    ),
    "cornell_scale_v1.0": Source(
        folders=("cornell_scale_v1.0",),
        downloads=(
            Download(
                url="http://www.cs.cornell.edu/people/pabo/movie-review-data/scale_data.tar.gz",
                extract=(("scaledata/", "cornell_scale_v1.0/scaledata/"),),
            ),
        ),
        file_sha256={
            f"cornell_scale_v1.0/{n}": sha for n, sha in PUBLISHED["cornell_scale_v1.0"].items()
        },
    ),
    "imdb": Source(
        folders=("imdb",),
        downloads=(
            Download(
                url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                # Only the labelled reviews: unsup/ and *.feat are never read.
                extract=tuple(
                    (f"aclImdb/{s}/{c}/", f"imdb/aclImdb/{s}/{c}/")
                    for s in ("train", "test")
                    for c in ("pos", "neg")
                ),
            ),
        ),
    ),
}


def cache_dir() -> Path:
    """Returns the user cache folder: `$XDG_CACHE_HOME/rnnreg_jax` or `~/.cache/rnnreg_jax`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnreg_jax"


def check_data_dir(data_dir: object) -> None:
    """A one-sentence ValueError unless `data_dir` is a folder path (a str or
    `os.PathLike`) or None (a number failed inside pathlib or TFDS)."""
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise ValueError(f"data_dir must be a folder path (a str or os.PathLike) or None, "
                         f"got {type(data_dir).__name__}.")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Returns the data root: `data_dir`, else `$RNNREG_DATA_DIR`, else `cache_dir()`."""
    check_data_dir(data_dir)
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else cache_dir()


def dataset_dir(
    folder: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    verify: bool = True,
) -> Path:
    """Returns `<root>/<folder>`, downloaded into the user cache when needed and verified.

    Args:
        folder: a key of `SOURCES`, e.g. "ptb_word".
        data_dir: explicit data root; None falls back to the env var, then the cache.
        download: download into the cache when the folder is missing there.
            Explicit and env-var roots are never written to.
        base_url: replaces the folder of every canonical URL (default `$RNNREG_DATA_URL`).
        verify: check the files with published sha256s (`checksums.verify_folder`)
            unless `$RNNREG_SKIP_DATA_CHECKS` is set; False uses a modified copy knowingly.

    Raises:
        DataError: a download failed, or a file differs from the published one.
        ValueError: `data_dir` is no path, or `download` or `verify` no bool.
    """
    check_switch(download, "download")
    check_switch(verify, "verify")  # "no" from a config checked the files
    explicit = bool(data_dir or os.environ.get(DATA_DIR_ENV))
    root = resolve_data_dir(data_dir)
    path = root / folder
    if not explicit and download and not path.is_dir() and folder in SOURCES:
        fetch(SOURCES[folder], root, base_url=base_url)
    if verify and not checks_skipped():
        verify_folder(path, folder)
    return path


def sha256_file(path: Path) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _url(d: Download, base_url: str | None) -> str:
    base = base_url if base_url is not None else os.environ.get(DATA_URL_ENV)
    return f"{base.rstrip('/')}/{d.url.rsplit('/', 1)[-1]}" if base else d.url


def download_file(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> None:
    """Downloads `url` to `dest` atomically (temp file in the same folder, then rename).

    Raises:
        DataError: the transfer failed or was cut short, or the sha256 differs;
            no file is left at `dest` in that case.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
        if expected is not None and received != int(expected):
            raise DataError(
                f"Download of {url} stopped after {received} of {expected} bytes; "
                "run again to retry or place the files yourself and " + FIX + "."
            )
        if sha256 is not None and h.hexdigest() != sha256:
            raise DataError(
                f"Download of {url} has sha256 {h.hexdigest()} instead of {sha256}; "
                "the server sent a different file, so place the files yourself and " + FIX + "."
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = str(getattr(e, "reason", None) or e or type(e).__name__)
        reason = " ".join(reason.split())
        raise DataError(
            f"Download of {url} failed ({reason}); check the connection and run again, "
            "or place the files yourself and " + FIX + "."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _member_dest(name: str, extract: tuple[tuple[str, str], ...]) -> str | None:
    name = posixpath.normpath(name)
    if ".." in name.split("/"):
        return None
    for src, dst in extract:
        if src.endswith("/"):
            i = ("/" + name).find("/" + src)
            if i >= 0:
                rest = name[i + len(src) :]
                if rest:
                    return dst + rest
        elif name == src or name.endswith("/" + src):
            return dst
    return None


def _unpack(archive: Path, d: Download, staging: Path, url: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                dest = _member_dest(member.name, d.extract)
                if dest is None:
                    continue
                target = staging / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except (tarfile.TarError, EOFError, OSError) as e:
        why = " ".join(str(e).split())  # tarfile lists each method's failure on a line
        raise DataError(
            f"Archive downloaded from {url} cannot be unpacked ({why}); "
            "run again to retry or place the files yourself and " + FIX + "."
        ) from None
    missing = [dst for src, dst in d.extract if not (staging / dst).exists()]
    if missing:
        raise DataError(
            f"Archive downloaded from {url} lacks {missing[0]}; "
            "place the files yourself and " + FIX + "."
        )


def fetch(source: Source, root: Path, base_url: str | None = None) -> None:
    """Downloads, verifies and unpacks `source` into `root` (see module docstring).

    Raises:
        DataError: a download failed or a checksum differs; nothing that looks
            complete is left behind.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    except OSError as e:
        raise DataError(
            f"Download cache {root} is not writable ({e.strerror or e}); "
            f"set XDG_CACHE_HOME to a writable folder, or {FIX}."
        ) from None
    try:
        for d in source.downloads:
            url = _url(d, base_url)
            logging.info("Downloading %s into %s", url, root)
            if not d.extract:
                download_file(url, staging / d.store_as, d.sha256)
                continue
            archive = staging / ("archive-" + url.rsplit("/", 1)[-1])
            download_file(url, archive, d.sha256)
            _unpack(archive, d, staging, url)
            archive.unlink()
        for rel, sha in source.file_sha256.items():
            path = staging / rel
            if not path.is_file():
                raise DataError(
                    f"Downloaded data lacks {rel}; place the files yourself and " + FIX + "."
                )
            got = sha256_file(path)
            if got != sha:
                raise DataError(
                    f"Downloaded file {rel} has sha256 {got} instead of {sha}; "
                    "the source changed, so place the files yourself and " + FIX + "."
                )
        for folder in source.folders:
            target = root / folder
            if target.exists():  # another process finished first
                continue
            try:
                os.replace(staging / folder, target)
            except OSError:
                if not target.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
