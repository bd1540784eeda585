"""A Google Cloud Storage stand-in on a local folder, for the tests of gs:// workdirs.

A run writes to its workdir by two routes, and both are pointed at `ROOT/BUCKET/OBJECT`:

* `etils.epath` (config.json, metrics.jsonl, orbax's step directories, commit files and
  deletions) goes through fsspec's `gs` protocol: `register_fsspec(root)` installs a local
  filesystem under it, in place of gcsfs.
* orbax's array data goes through TensorStore's own GCS client, which speaks the JSON API
  over HTTP: `GCSServer(root)` answers that API's object calls (read, conditional write,
  delete, list) and `TENSORSTORE_GCS_HTTP_URL` points the client at it.

An object's generation is its file's modification time in nanoseconds, so a write by
either route is seen by the other. Run a binary against it with

    python -m tests.emulated_gcs ROOT experiments.ptb --workdir=gs://BUCKET/run ...

which registers the fsspec side and, unless `TENSORSTORE_GCS_HTTP_URL` names a server
already, starts one in that process. Unlike GCS, the folders fsspec makes are real ones:
an empty "directory" exists here and not there (epath's code treats both alike).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import runpy
import sys
import tempfile
import threading
import urllib.parse

_API = "/storage/v1/b/"
_UPLOAD = "/upload/storage/v1/b/"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TensorStore's client expects
    root: str = ""
    calls: dict[str, int] = {}  # per subclass: requests by HTTP method
    lock = threading.Lock()  # conditional writes and deletes check and act as one step

    def log_message(self, *args):  # one line per request would bury a test's output
        pass

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            with _Handler.lock:
                self.calls[self.command] = self.calls.get(self.command, 0) + 1
        return ok

    # --- helpers -------------------------------------------------------------------------

    def _reply(self, code: int, body: bytes = b"", kind: str = "application/json",
               headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, value) -> None:
        self._reply(code, json.dumps(value).encode())

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"error": {"code": code, "message": message}})

    def _parse(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return url.path, query

    def _file(self, bucket: str, name: str) -> str:
        path = os.path.normpath(os.path.join(self.root, bucket, name))
        if not path.startswith(os.path.join(self.root, bucket) + os.sep):
            raise ValueError(f"object name {name!r} leaves the bucket")
        return path

    @staticmethod
    def _generation(path: str) -> int | None:
        try:
            return os.stat(path).st_mtime_ns if os.path.isfile(path) else None
        except FileNotFoundError:
            return None

    def _resource(self, bucket: str, name: str, path: str) -> dict:
        stat = os.stat(path)
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "generation": str(stat.st_mtime_ns), "metageneration": "1",
                "size": str(stat.st_size)}

    def _precondition_fails(self, query: dict, generation: int | None) -> bool:
        """GCS's ifGenerationMatch (0: the object must not exist) and ifGenerationNotMatch."""
        if "ifGenerationMatch" in query:
            want = int(query["ifGenerationMatch"])
            if (generation or 0) != want:
                return True
        if "ifGenerationNotMatch" in query and generation is not None:
            return generation == int(query["ifGenerationNotMatch"])
        return False

    # --- the JSON API's object calls -----------------------------------------------------

    def do_GET(self):
        path, query = self._parse()
        if not path.startswith(_API):
            return self._error(404, "unknown call")
        bucket, _, rest = path[len(_API):].partition("/")
        if rest == "o":
            return self._list(bucket, query)
        if not rest.startswith("o/"):
            return self._error(404, "unknown call")
        name = urllib.parse.unquote(rest[2:])
        file = self._file(bucket, name)
        generation = self._generation(file)
        if generation is None:
            return self._error(404, "No such object")
        if "ifGenerationNotMatch" in query and generation == int(query["ifGenerationNotMatch"]):
            return self._reply(304)
        if "ifGenerationMatch" in query and generation != int(query["ifGenerationMatch"]):
            return self._error(412, "precondition failed")
        if query.get("alt") != "media":
            return self._json(200, self._resource(bucket, name, file))
        with open(file, "rb") as f:
            data = f.read()
        headers = {"x-goog-generation": str(generation)}
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes="):].partition("-")
            if first == "":  # a suffix: the last N bytes
                start, stop = max(0, len(data) - int(last)), len(data)
            else:
                start, stop = int(first), (int(last) + 1 if last else len(data))
            if start > len(data) or (start == len(data) and len(data) > 0):
                return self._error(416, "range not satisfiable")
            stop = min(stop, len(data))
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
            return self._reply(206, data[start:stop], "application/octet-stream", headers)
        return self._reply(200, data, "application/octet-stream", headers)

    do_HEAD = do_GET

    def _list(self, bucket: str, query: dict) -> None:
        prefix = query.get("prefix", "")
        start, end = query.get("startOffset", ""), query.get("endOffset", "")
        base = os.path.join(self.root, bucket)
        items = []
        for folder, _, files in os.walk(base):
            for file in files:
                if file.startswith(".upload."):  # an upload under way is no object yet
                    continue
                full = os.path.join(folder, file)
                name = os.path.relpath(full, base).replace(os.sep, "/")
                if name.startswith(prefix) and name >= start and (not end or name < end):
                    items.append(self._resource(bucket, name, full))
        items.sort(key=lambda item: item["name"])
        self._json(200, {"kind": "storage#objects", "items": items})

    def do_POST(self):
        path, query = self._parse()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not path.startswith(_UPLOAD) or query.get("uploadType") != "media":
            return self._error(400, "only uploadType=media uploads are emulated")
        bucket = path[len(_UPLOAD):].partition("/")[0]
        name = query["name"]
        file = self._file(bucket, name)
        with _Handler.lock:
            before = self._generation(file)
            if self._precondition_fails(query, before):
                return self._error(412, "precondition failed")
            os.makedirs(os.path.dirname(file), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), prefix=".upload.")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, file)
            if before is not None and self._generation(file) <= before:
                # File times tick coarsely: a rewrite must still get a new generation.
                os.utime(file, ns=(before + 1, before + 1))
            resource = self._resource(bucket, name, file)
        self._json(200, resource)

    def do_DELETE(self):
        path, query = self._parse()
        bucket, _, rest = path[len(_API):].partition("/")
        if not path.startswith(_API) or not rest.startswith("o/"):
            return self._error(404, "unknown call")
        file = self._file(bucket, urllib.parse.unquote(rest[2:]))
        with _Handler.lock:
            generation = self._generation(file)
            if generation is None:
                return self._error(404, "No such object")
            if self._precondition_fails(query, generation):
                return self._error(412, "precondition failed")
            os.remove(file)
        self._reply(204)


class GCSServer:
    """The JSON API on 127.0.0.1 (a free port) over `root`, served from a thread."""

    def __init__(self, root: str):
        self.calls: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"root": os.path.abspath(root),
                                                "calls": self.calls})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> GCSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def register_fsspec(root: str) -> None:
    """fsspec's `gs` and `gcs` protocols become a local filesystem rooted at `root`.

    A folder filesystem rather than a plain local one: it names what it lists (glob, ls,
    walk) as `bucket/path`, as gcsfs does, so epath hands back `gs://` paths, not local ones.
    """
    import fsspec
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    root = os.path.abspath(root)

    class LocalGCS(DirFileSystem):
        protocol = ("gs", "gcs")

        def __init__(self, **options):
            options.pop("finalize_on_close", None)  # gcsfs's option, which epath passes
            super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True), **options)

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, LocalGCS, clobber=True)


def _flat_buckets() -> None:
    """Orbax asks the bucket, through google-cloud-storage, whether it has a hierarchical
    namespace (folders to delete after a step's objects); the emulated bucket is flat."""
    from orbax.checkpoint._src.path import gcs_utils

    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False


if __name__ == "__main__":
    root, module, *args = sys.argv[1:]
    register_fsspec(root)
    with contextlib.ExitStack() as stack:
        if not os.environ.get("TENSORSTORE_GCS_HTTP_URL"):
            server = stack.enter_context(GCSServer(root))
            os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url  # before TensorStore loads
        _flat_buckets()
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
