"""Small fake data sets in the real layout, and a local HTTP server for download tests."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PTB_TRAIN = " the cat sat \n the dog sat down \n a cat ran \n"
PTB_VALID = " the dog ran \n a cat sat \n"
PTB_TEST = " a dog sat down \n"
CORNELL_AUTHORS = ("Dennis+Schwartz", "James+Berardinelli", "Scott+Renshaw", "Steve+Rhodes")


def char_text(word_text: str) -> str:
    """The word -> char transform of ptb_char/PROVENANCE.md."""
    lines = word_text.split("\n")[:-1]
    return "".join(" ".join("_".join(line.split())) + " \n " for line in lines)


def write(path: Path, data: bytes | str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
    return path


def write_ptb_word(root: Path, texts: dict[str, str] | None = None, gz: bool = False) -> Path:
    texts = texts or {"train": PTB_TRAIN, "valid": PTB_VALID, "test": PTB_TEST}
    for split, text in texts.items():
        write(root / "ptb_word" / f"ptb.{split}.txt", text, gz)
    return root / "ptb_word"


def write_repeated_ptb_word(root: Path) -> Path:
    """A 20-word vocabulary repeated: enough for the binaries' `tiny` preset to run a few
    batches of 2 x 10 tokens (`--config.data.batch_size=2`)."""
    line = " " + " ".join(f"w{i}" for i in range(20)) + " \n"
    return write_ptb_word(root, {"train": line * 20, "valid": line * 4, "test": line * 4})


def write_ptb_char(root: Path, gz: bool = True) -> Path:
    for split, text in (("train", PTB_TRAIN), ("valid", PTB_VALID), ("test", PTB_TEST)):
        write(root / "ptb_char" / f"ptb.char.{split}.txt", char_text(text), gz)
    return root / "ptb_char"


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(
    root: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Writes random idx files; returns the arrays written."""
    rng = np.random.RandomState(seed)
    arrays = {
        "train_images": rng.randint(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.randint(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for split, stem in (("train", "train"), ("test", "t10k")):
        write(
            root / "mnist" / f"{stem}-images-idx3-ubyte",
            idx_bytes(arrays[f"{split}_images"], 2051),
            gz,
        )
        write(
            root / "mnist" / f"{stem}-labels-idx1-ubyte",
            idx_bytes(arrays[f"{split}_labels"], 2049),
            gz,
        )
    return arrays


def cornell_docs() -> dict[str, tuple[list[str], list[float]]]:
    """Per author: reviews of various lengths (5, 200, 450 words ...) and ratings."""
    out = {}
    for a_i, author in enumerate(CORNELL_AUTHORS):
        docs, ratings = [], []
        for d_i, n in enumerate((5, 200, 450, 30 + a_i)):
            words = [f"W{(a_i * 7 + d_i * 3 + k) % 50}" for k in range(n)]
            docs.append(" ".join(words))
            ratings.append(round(0.1 + 0.2 * d_i + 0.01 * a_i, 2))
        out[author] = (docs, ratings)
    return out


def write_cornell(root: Path) -> dict[str, tuple[list[str], list[float]]]:
    docs = cornell_docs()
    for author, (texts, ratings) in docs.items():
        folder = root / "cornell_scale_v1.0" / "scaledata" / author
        write(folder / f"subj.{author}", "".join(t + "\n" for t in texts))
        write(folder / f"rating.{author}", "".join(f"{r}\n" for r in ratings))
    return docs


IMDB_REVIEWS = {
    ("train", "pos", 0, 9): "A great film.<br /><br />Great acting, great story!",
    ("train", "pos", 1, 8): "Loved it; the story was great.",
    ("train", "neg", 0, 1): "Awful film. Bad acting, bad story.",
    ("train", "neg", 1, 2): "Bad. Just bad_movie (really).",
    ("test", "pos", 0, 10): "Great great great film.",
    ("test", "neg", 0, 3): "A bad, boring film.",
    ("test", "neg", 1, 4): "Caf\u00e9 scenes were bad.",
}


def imdb_files() -> dict[str, bytes]:
    return {
        f"aclImdb/{s}/{c}/{i}_{r}.txt": t.encode() for (s, c, i, r), t in IMDB_REVIEWS.items()
    } | {"aclImdb/README": b"readme"}


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_imdb(root: Path, archive: bool = True) -> Path:
    if archive:
        return make_tar(root / "imdb" / "aclImdb_labeled.tar.xz", imdb_files(), "w:xz")
    for name, data in imdb_files().items():
        write(root / "imdb" / name, data)
    return root / "imdb" / "aclImdb"


@contextlib.contextmanager
def serve(files: dict[str, bytes], cut_after: int | None = None) -> Iterator[str]:
    """Serves `files` (name -> bytes) on 127.0.0.1; yields the base URL.

    With `cut_after`, every response announces the full Content-Length but the
    connection closes after `cut_after` bytes of body (an interrupted transfer).
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            data = files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if cut_after is None else data[:cut_after])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
