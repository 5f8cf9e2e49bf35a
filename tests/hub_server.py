"""A stand-in Hugging Face Hub on 127.0.0.1 for download tests (loopback only, in memory).

It answers what `huggingface_hub.hf_hub_download` (2.4.0) asks: HEAD and GET on
`/{repo}/resolve/{revision}/{path}`, with the headers the client relies on:

- `X-Repo-Commit`: the commit sha the revision resolved to;
- `ETag`: a git-blob sha1 for small files; for `.safetensors` files (stored with LFS on the
  real Hub) also `X-Linked-Etag` = sha256 of the content and `X-Linked-Size`;
- `Content-Length`, and `Range: bytes=N-` answered with 206 + `Content-Range`;
- errors as the Hub sends them: `X-Error-Code` RepoNotFound (401), RevisionNotFound (404),
  EntryNotFound (404).

Switches for failure tests: `corrupt(repo, path)` serves bytes with one byte flipped (same
length and the same ETag, as a broken CDN would), `drop(repo, path, times)` promises the
whole body, sends half and closes the connection. Every request is logged in `requests`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    method: str
    repo: str
    revision: str
    path: str
    range: str | None
    status: int


def commit_sha(files: dict[str, bytes], salt: str = "") -> str:
    """A deterministic 40-hex "commit" for a set of files."""
    digest = hashlib.sha1(salt.encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class StandInHub:
    """In-memory repos served over HTTP on 127.0.0.1 at a free port; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> path -> bytes
        self._branches: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self._corrupt: dict[tuple[str, str], int | None] = {}  # remaining corrupted GETs
        self._drops: dict[tuple[str, str], int | None] = {}  # remaining sabotaged GETs (None: all)
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- content ------------------------------------------------------------------

    def add_repo(self, repo: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        """Publish `files` as a new commit of `repo` and point `branch` at it; returns the sha."""
        sha = commit_sha(files, salt=repo)
        with self._lock:
            self._repos.setdefault(repo, {})[sha] = dict(files)
            self._branches.setdefault(repo, {})[branch] = sha
        return sha

    def corrupt(self, repo: str, path: str, times: int | None = None) -> None:
        """Serve `path` with one byte flipped (same size, same advertised ETag) on the next
        `times` GETs (None: always)."""
        with self._lock:
            self._corrupt[(repo, path)] = times

    def drop(self, repo: str, path: str, times: int | None = None) -> None:
        """Cut the connection half-way through the next `times` GETs of `path` (None: always)."""
        with self._lock:
            self._drops[(repo, path)] = times

    def heal(self) -> None:
        """Turn every failure switch off."""
        with self._lock:
            self._corrupt.clear()
            self._drops.clear()

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def requests_for(self, path: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    # ---- server -------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(_Handler):
            stand_in = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StandInHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request logic (called from handler threads) ----------------------------------

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _lookup(self, repo: str, revision: str, path: str) -> tuple[int, dict[str, str], bytes | None]:
        """(status, headers, content) for a resolve request, before ranges and switches."""
        with self._lock:
            commits = self._repos.get(repo)
            if commits is None:
                return 401, {"X-Error-Code": "RepoNotFound"}, None
            sha = revision if (_COMMIT.fullmatch(revision) and revision in commits) else None
            sha = sha or self._branches[repo].get(revision)
            if sha is None:
                return 404, {"X-Error-Code": "RevisionNotFound"}, None
            content = commits[sha].get(path)
            if content is None:
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, None
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if path.endswith(".safetensors"):
            headers["ETag"] = f'"{_git_blob_sha1(content)}"'
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(content).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(content))
        else:
            headers["ETag"] = f'"{_git_blob_sha1(content)}"'
        return 200, headers, content

    def _sabotage(self, repo: str, path: str) -> tuple[bool, bool]:
        """(corrupt this response?, drop this response?); counts down limited switches."""
        key = (repo, path)
        with self._lock:
            return _consume(self._corrupt, key), _consume(self._drops, key)


def _consume(switches: dict[tuple[str, str], int | None], key: tuple[str, str]) -> bool:
    """Whether switch `key` is on for this request; counts down a limited switch."""
    if key not in switches:
        return False
    left = switches[key]
    if left is not None:
        if left <= 1:
            del switches[key]
        else:
            switches[key] = left - 1
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stand_in: StandInHub

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._resolve(head=True)

    def do_GET(self) -> None:
        self._resolve(head=False)

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _resolve(self, *, head: bool) -> None:
        raw_path = urlsplit(self.path).path
        prefix, sep, rest = raw_path.partition("/resolve/")
        method = "HEAD" if head else "GET"
        byte_range = self.headers.get("Range")
        if not sep or "/" not in rest:
            self.stand_in._log(Request(method, "", "", raw_path, byte_range, 404))
            self._send(404, {}, b"not a resolve url", head=head)
            return
        repo = unquote(prefix.strip("/"))
        raw_revision, _, raw_file = rest.partition("/")
        revision, path = unquote(raw_revision), unquote(raw_file)

        status, headers, content = self.stand_in._lookup(repo, revision, path)
        if content is None:
            self.stand_in._log(Request(method, repo, revision, path, byte_range, status))
            self._send(status, headers, b"" if head else headers["X-Error-Code"].encode(), head=head)
            return

        corrupt, drop = (False, False) if head else self.stand_in._sabotage(repo, path)
        if corrupt and content:
            middle = len(content) // 2
            content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1 :]

        start = 0
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range or "")
        if match and not head:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            if start >= len(content) and len(content) > 0:
                self.stand_in._log(Request(method, repo, revision, path, byte_range, 416))
                self._send(416, {"Content-Range": f"bytes */{len(content)}"}, head=head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            body = content[start : end + 1]
            status = 206
        else:
            body = content
        headers["Content-Length"] = str(len(body))
        self.stand_in._log(Request(method, repo, revision, path, byte_range, status))

        if drop:
            # Promise the whole body, deliver up to the file's midpoint, then hang up.
            self.close_connection = True
            cut = len(content) // 2
            if start >= cut:
                return  # closed without any response at all
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(content[start:cut])
            self.wfile.flush()
            return
        self._send(status, headers, body, head=head)


def small_disk(folder: Path, free: int) -> dict[str, str]:
    """Environment for a `mav` subprocess in which the disk below `folder` reports `free` bytes
    free: a sitecustomize module (in `folder`/small-disk) patches `shutil.disk_usage` there."""
    site = folder / "small-disk"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import shutil\n"
        "_real = shutil.disk_usage\n"
        "def _usage(path):\n"
        "    usage = _real(path)\n"
        f"    return usage._replace(free={free}) if str(path).startswith({str(folder)!r}) else usage\n"
        "shutil.disk_usage = _usage\n")
    return {"PYTHONPATH": str(site)}
