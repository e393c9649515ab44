"""A fault-injecting HTTP server on loopback: files served with the faults a test queues (conftest: `http_server`)."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


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
