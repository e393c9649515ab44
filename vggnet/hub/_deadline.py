"""One download's deadline: every connection the download opens is tracked, and cut when time is up.

`Watch(ends)` is entered around a whole download (connecting, TLS, headers, body, retries and waits);
`watched_adapter()(watch)` is requests' HTTPAdapter whose urllib3 connections report their sockets to
the watch, so that at the deadline whatever waits on one (a TLS handshake, headers sent a byte at a
time, a slow body) returns at once. requests and urllib3 are imported on first use, not with vggnet.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests

__all__ = ["Watch", "watched_adapter"]


class Watch:
    """One download's deadline: at `ends`, shut every connection the download has open, so that whatever
    waits on one (a TLS handshake, headers sent a byte at a time, a slow body) returns at once."""

    def __init__(self, ends: float, seconds: float | None = None) -> None:
        self.ends = ends
        self.seconds = max(0.0, ends - time.monotonic()) if seconds is None else seconds  # the budget, for messages
        self.expired = threading.Event()
        self._lock = threading.Lock()
        # connection -> a duplicate of its socket's descriptor: a TLS wrap detaches the socket object
        # urllib3 made, the duplicate stays valid from connect to close, and shutting it shuts the connection
        self._socks: dict[object, socket.socket] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Watch:
        self._timer = threading.Timer(max(0.0, self.ends - time.monotonic()), self._cut)  # fires at `ends`
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()
        with self._lock:
            for sock in self._socks.values():
                sock.close()
            self._socks.clear()

    def opened(self, conn: object, sock: socket.socket) -> None:
        """`conn` has connected through `sock`: shut it when the deadline passes (at once if it has)."""
        with self._lock:
            self._forget(conn)
            if self.expired.is_set():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            else:
                self._socks[conn] = sock.dup()

    def closed(self, conn: object) -> None:
        with self._lock:
            self._forget(conn)

    def _forget(self, conn: object) -> None:
        sock = self._socks.pop(conn, None)
        if sock is not None:
            sock.close()

    def _cut(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._socks.values():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# The watch of the download whose request is being sent here: urllib3 builds connections deep inside a
# request, with no argument that could carry it to them.
_WATCH: ContextVar[Watch | None] = ContextVar("vggnet_download_watch", default=None)


@functools.cache
def watched_adapter() -> Callable[[Watch], requests.adapters.HTTPAdapter]:
    """requests' HTTPAdapter whose connections tell a `Watch` their sockets (built on first use: requests and
    urllib3 are imported when a download starts, not with vggnet)."""
    import requests.adapters
    from urllib3 import PoolManager
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Watched(HTTPConnection):
        _watch: Watch | None = None

        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            self._watch = _WATCH.get()
            if self._watch is not None:
                self._watch.opened(self, sock)
            return sock

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self._watch is not None:
                    self._watch.closed(self)

    class WatchedHTTPS(Watched, HTTPSConnection):  # verifies certificates exactly as HTTPSConnection does
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Watched

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPS

    plain = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
    pools = {"http": Pool, "https": HTTPSPool}

    class Adapter(requests.adapters.HTTPAdapter):
        def __init__(self, watch: Watch) -> None:
            self.watch = watch
            super().__init__()

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> PoolManager:
            manager: PoolManager = super().proxy_manager_for(proxy, **kwargs)
            if manager.pool_classes_by_scheme == plain:  # not a SOCKS proxy's pools, which stay unwatched
                manager.pool_classes_by_scheme = pools
            return manager

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            token = _WATCH.set(self.watch)
            try:
                return super().send(request, *args, **kwargs)
            finally:
                _WATCH.reset(token)

    return Adapter
