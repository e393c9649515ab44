"""The partial file one download writes into: created private beside its destination, or adopted
from a download that died (and resumed from its size); hashed on a helper thread as bytes arrive.

How partial files are named, found and claimed is `locks.py`'s; the transfer is `download.py`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import queue
import threading
from pathlib import Path
from typing import IO, Any

from vggnet.hub._files import create_private, hash_into
from vggnet.hub._locks import claim, new_partial, partials, size_or_zero, try_flock

logger = logging.getLogger(__name__)

_DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


class DiskFull(Exception):
    """Writing the partial file failed for want of space (ENOSPC, EDQUOT, EFBIG)."""


class _StreamHasher:
    """SHA-256 of a stream, computed on a helper thread so that it overlaps the network reads and
    the disk writes (hashlib releases the GIL). Hashing in line nearly doubled the time of a
    loopback download (benchmarks/bench_download.py); this way it costs almost nothing."""

    def __init__(self, hasher: Any = None) -> None:
        self._hasher = hasher if hasher is not None else hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)  # at most 16 chunks in flight
        self._thread = threading.Thread(target=self._run, name="vggnet-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return str(self._hasher.hexdigest())

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class Partial:
    """The file a download writes into: created private, or adopted from a dead download; flock-held."""

    def __init__(self, path: Path, file: IO[bytes], size: int, hasher: Any = None) -> None:
        self.path, self.file, self.size, self.hasher = path, file, size, _StreamHasher(hasher)
        self.resumed = size > 0  # holds bytes from a Range request or an earlier call: the prefix may be bad
        self.unsized = False  # some bytes came without a known length: a short body looks complete
        self.total: int | None = None  # the file's size, once known

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as err:
            if err.errno in _DISK_FULL:
                raise DiskFull(err.strerror or str(err)) from err
            raise
        self.hasher.update(chunk)
        self.size += len(chunk)

    def flush(self) -> None:
        try:
            self.file.flush()  # no fsync: a file lost in a crash fails its stamp and is fetched again
        except OSError as err:
            if err.errno in _DISK_FULL:
                raise DiskFull(err.strerror or str(err)) from err
            raise

    def restart(self) -> None:
        with contextlib.suppress(OSError):  # what a full disk left in the buffer is dropped with the rest
            self.file.flush()
        self.file.seek(0)
        self.file.truncate()
        self.hasher.close()
        self.size, self.hasher = 0, _StreamHasher()
        self.resumed = self.unsized = False

    def close(self) -> None:
        self.hasher.close()
        with contextlib.suppress(OSError):  # a full disk's buffered tail: the file is removed or resumed from its size
            self.file.close()


def open_partial(dest: Path, key: str, *, resume: bool, limit: int | None) -> Partial:
    """A partial file for `dest`: the largest dead download of `key` to resume (with `resume`), else a new one."""
    if resume:
        for path in sorted(partials(dest, key + "."), key=size_or_zero, reverse=True):
            f = claim(path)
            if f is None:
                continue
            hasher = hashlib.sha256()
            size = hash_into(f, hasher)
            part = Partial(path, f, size, hasher)
            if limit is not None and size > limit:
                part.restart()
            logger.info("resuming %s from %d bytes already on disk", dest.name, part.size)
            return part
    path = new_partial(dest, key)
    f = create_private(path)
    try_flock(f.fileno())
    return Partial(path, f, 0)
