"""HTTP servers on loopback for the tests.

- `FaultServer`: files served with the faults a test queues (conftest: `http_server`).
- `FakeHub`: the Hugging Face Hub's file routes (`HEAD/GET /{owner}/{name}/resolve/{revision}/{file}`) as the
  Hub serves LFS files: `X-Repo-Commit`, `X-Linked-Etag` (the file's SHA-256, quoted), `X-Linked-Size`, a
  git-style `ETag`, optionally a 302 to a "CDN" route `/cdn/{sha256}` (another origin: `localhost` instead of
  `127.0.0.1`). Every header can be replaced per file to play a hostile Hub; bodies and headers can trickle.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Fault:
    """What the server does to one request; build one with the class methods."""

    kind: str
    status: int = 200
    after: int = 0
    seconds: float = 0.0
    data: bytes = b""
    location: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def http(cls, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> Fault:
        """Answer with this status (and headers, e.g. Retry-After) instead of the file."""
        return cls("http", status=status, headers=dict(headers or {}), data=body)

    @classmethod
    def drop(cls, after: int) -> Fault:
        """Announce the whole file, send `after` bytes of it, then close the connection."""
        return cls("drop", after=after)

    @classmethod
    def stall(cls, after: int, seconds: float) -> Fault:
        """Send `after` bytes, go silent for `seconds`, then close the connection."""
        return cls("stall", after=after, seconds=seconds)

    @classmethod
    def ignore_range(cls) -> Fault:
        """Answer 200 with the whole file even when the request asked for a Range."""
        return cls("ignore_range")

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Fault:
        """Redirect to `location` (a path on this server or a URL)."""
        return cls("redirect", status=status, location=location)

    @classmethod
    def extra(cls, data: bytes, announce: bool = True) -> Fault:
        """Send the file followed by `data`; Content-Length counts only the file, or is absent."""
        return cls("extra", data=data, after=int(announce))

    @classmethod
    def length(cls, content_length: int) -> Fault:
        """Serve the file normally but announce this Content-Length (then close)."""
        return cls("length", after=content_length)

    @classmethod
    def body(cls, data: bytes) -> Fault:
        """Serve these bytes instead of the file (a wrong file, an HTML error page)."""
        return cls("body", data=data)


@dataclass
class Request:
    """One request as the server saw it; logged when it arrives and updated as the answer goes out,
    so a client that has read the last byte already sees its request counted."""

    path: str
    method: str
    range: str | None
    status: int = 0
    bytes_sent: int = 0


@dataclass
class _Route:
    body: Body
    faults: list[Fault]
    rate: float | None


Body = bytes | Path  # what a route serves: the bytes, or a file


class FaultServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that serves registered files and injects faults."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._log: list[Request] = []
        self._mutex = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: Body, *faults: Fault, rate: float | None = None) -> str:
        """Serve `body` (bytes or a file) at `path`; each request takes the next fault. Returns the URL."""
        with self._mutex:
            self._routes[path] = _Route(body, list(faults), rate)
        return self.url(path)

    def set_rate(self, path: str, rate: float | None) -> None:
        with self._mutex:
            self._routes[path].rate = rate

    def log(self, path: str | None = None) -> list[Request]:
        """The finished requests, in order of completion (optionally only those for `path`)."""
        with self._mutex:
            return [r for r in self._log if path is None or r.path == path]

    def count(self, path: str) -> int:
        return len(self.log(path))

    def bytes_served(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.log(path))

    def reset(self) -> None:
        with self._mutex:
            self._routes.clear()
            self._log.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, path: str) -> tuple[_Route | None, Fault | None]:
        with self._mutex:
            route = self._routes.get(path)
            fault = route.faults.pop(0) if route is not None and route.faults else None
            return route, fault

    def _record(self, request: Request) -> None:
        with self._mutex:
            self._log.append(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FaultServer
    entry: Request
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        route, fault = self.owner._route(path)
        self.entry = Request(path, self.command, self.headers.get("Range"))
        self.owner._record(self.entry)
        try:
            self._respond(route, fault, self.entry.range, head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        if hasattr(self, "entry"):  # not for a request too malformed to reach _serve
            self.entry.status = code
        super().send_response(code, message)

    def _respond(self, route: _Route | None, fault: Fault | None, asked: str | None, head: bool) -> None:
        if route is None:
            return self._plain(404, b"not found")
        if fault is not None and fault.kind == "http":
            return self._plain(fault.status, fault.data, fault.headers)
        if fault is not None and fault.kind == "redirect":
            return self._plain(fault.status, b"", {"Location": fault.location})
        data = fault.data if fault is not None and fault.kind == "body" else route.body
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        start, end = 0, size
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", asked or "")
        if match and not (fault is not None and fault.kind == "ignore_range"):
            start = int(match.group(1))
            if start >= size:
                return self._plain(416, b"", {"Content-Range": f"bytes */{size}"})
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        length: int | None = end - start
        extra = b""
        if fault is not None and fault.kind == "extra":
            extra = fault.data
            length = length if fault.after else None
        if fault is not None and fault.kind == "length":
            length = fault.after
        if length is not None:
            self.send_header("Content-Length", str(length))
        if fault is not None or length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return None
        stop = end
        if fault is not None and fault.kind in ("drop", "stall"):
            stop = min(end, start + fault.after)
        self._send(data, start, stop, route.rate)
        if extra:
            self._write(extra)
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind in ("drop", "stall"):
            self.connection.shutdown(socket.SHUT_RDWR)
        return None

    def _plain(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _write(self, piece: bytes | memoryview) -> None:
        self.entry.bytes_sent += len(piece)  # counted before the client can see it
        try:
            self.wfile.write(piece)
        except OSError:
            self.entry.bytes_sent -= len(piece)
            raise

    def _send(self, data: Body, start: int, stop: int, rate: float | None) -> None:
        chunk = 1 << 20 if rate is None else max(1, min(1 << 20, int(rate / 20)))
        began = time.monotonic()
        with _opened(data) as read:
            pos = start
            while pos < stop:
                piece = read(pos, min(chunk, stop - pos))
                self._write(piece)
                pos += len(piece)
                if rate is not None:
                    ahead = (pos - start) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


class _opened:
    """A `read(offset, n)` over bytes or a file."""

    def __init__(self, data: Body) -> None:
        self.data = data
        self.file = None if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.file is None:
            view = memoryview(self.data)  # type: ignore[arg-type]
            return lambda pos, n: view[pos : pos + n]

        def read(pos: int, n: int) -> bytes:
            self.file.seek(pos)  # type: ignore[union-attr]
            return self.file.read(n)  # type: ignore[union-attr]

        return read

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


# --- a stand-in for the Hugging Face Hub ---------------------------------------------------------

COMMIT_A = "0123456789abcdef0123456789abcdef01234567"
COMMIT_B = "89abcdef0123456789abcdef0123456789abcdef"


@dataclass
class HubEntry:
    """One file at one commit, and how the server misbehaves about it."""

    data: bytes
    headers: dict[str, str | None] = field(default_factory=dict)  # replace (str) or drop (None) a HEAD/GET header
    body: bytes | None = None  # what GET sends instead of `data` (the headers still describe `data`)
    trickle: float = 0.0  # seconds between body bytes (0: all at once)
    trickle_headers: float = 0.0  # seconds between header bytes of the response
    redirect: bool = False  # answer /resolve with a 302 to the CDN route
    status: int = 200  # another status (a 503), with an empty body


class FakeHub:
    """The server: `repos[repo_id][commit][filename] = Entry`, `refs[repo_id][name] = commit`."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, HubEntry]]] = {}
        self.refs: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        self.not_found_headers: dict[str, str] = {}  # extra headers on a 404
        self.routes: dict[str, dict[str, str]] = {}  # path -> headers of a 200 with an empty body
        self.agents: list[tuple[str, str]] = []  # (path, User-Agent)
        self.closing = threading.Event()
        self._cdn: dict[str, HubEntry] = {}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.cdn_base = self.endpoint  # where redirects point: "http://localhost:PORT" is another origin

    def put(self, repo_id: str, filename: str, data: bytes, *, commit: str = COMMIT_A, ref: str | None = "main",
            **how: Any) -> HubEntry:  # fmt: skip
        """Publish `data` as `filename` of `repo_id` at `commit` (and point `ref` at that commit)."""
        entry = HubEntry(data, **how)
        self.repos.setdefault(repo_id, {}).setdefault(commit, {})[filename] = entry
        if ref is not None:
            self.refs.setdefault(repo_id, {})[ref] = commit
        self._cdn[hashlib.sha256(data).hexdigest()] = entry
        return entry

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- serving ----------------------------------------------------------------------------------

    def _lookup(self, path: str) -> tuple[HubEntry | None, str | None]:
        parts = path.split("?", 1)[0].lstrip("/").split("/")
        if parts[0] == "cdn" and len(parts) == 2:
            return self._cdn.get(parts[1]), None
        if len(parts) < 5 or parts[2] != "resolve":
            return None, None
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        commit = self.refs.get(repo_id, {}).get(revision, revision)
        return self.repos.get(repo_id, {}).get(commit, {}).get(filename), commit

    def _serve(self, h: http.server.BaseHTTPRequestHandler, *, body: bool) -> None:
        self.requests.append((h.command, h.path, h.headers.get("Authorization")))
        self.agents.append((h.path, h.headers.get("User-Agent", "")))
        if h.path.split("?", 1)[0] in self.routes:
            self._send(h, 200, {"Content-Length": "0", **self.routes[h.path.split("?", 1)[0]]})
            return
        entry, commit = self._lookup(h.path)
        if entry is None:
            self._send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit or COMMIT_A,
                                "Content-Length": "0", **self.not_found_headers})  # fmt: skip
            return
        if entry.status != 200:
            self._send(h, entry.status, {"Content-Length": "0"})
            return
        sha = hashlib.sha256(entry.data).hexdigest()
        headers: dict[str, str | None] = {
            "X-Repo-Commit": commit or COMMIT_A,
            "ETag": '"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"',  # a git pointer's sha1, as the Hub sends
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(entry.data)),
            "Content-Length": str(len(entry.data)),
        }
        if commit is None:  # the CDN route: plain file headers
            headers = {"ETag": f'"{sha}"', "Content-Length": str(len(entry.data))}
        elif entry.redirect:
            headers["Location"] = f"{self.cdn_base}/cdn/{sha}"
            headers["Content-Length"] = "0"
        headers.update(entry.headers if commit is not None else {})
        status = 302 if commit is not None and entry.redirect else 200
        if status == 200 and body:
            payload = entry.body if entry.body is not None else entry.data
            rng = h.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                headers["Content-Range"] = f"bytes {start}-{len(payload) - 1}/{len(payload)}"
                payload, status = payload[start:], 206
            if entry.body is not None or status == 206:
                headers["Content-Length"] = str(len(payload))
        else:
            payload = b""
        self._send(h, status, headers, entry.trickle_headers)
        self._write(h, payload, entry.trickle)

    def _send(self, h: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str | None],
              trickle: float = 0.0) -> None:  # fmt: skip
        lines = [f"HTTP/1.1 {status} X\r\n"] + [f"{k}: {v}\r\n" for k, v in headers.items() if v is not None]
        self._write(h, ("".join(lines) + "\r\n").encode("latin-1"), trickle)

    def _write(self, h: http.server.BaseHTTPRequestHandler, data: bytes, trickle: float) -> None:
        try:
            if not trickle:
                h.wfile.write(data)
                h.wfile.flush()
                return
            for i in range(len(data)):
                if self.closing.is_set():
                    return
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                time.sleep(trickle)
        except OSError:  # the client went away (as a deadline makes it do)
            h.close_connection = True
