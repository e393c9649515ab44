"""One HTTP transfer: stream into a private partial file in the destination folder, hashing as the
bytes arrive; resume with Range; retry with backoff (and Retry-After); verify; rename into place.

Plain values in (a URL, a destination path, the expected digest and size), a verified file out.
Where the partial files live and how they are named and claimed is `cache.py`'s.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import re
import sys
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .cache import (
    _CHUNK,
    ChecksumError,
    _claim,
    _create_private,
    _dir_error,
    _hash_into,
    _new_partial,
    _partial_key,
    _partials,
    _publish,
    _size_or_zero,
    _try_flock,
    _write_stamp,
)
from .checks import check_int

if TYPE_CHECKING:
    import requests
    from tqdm import tqdm

# requests (urllib3 probes IPv6 with a socket on import) and tqdm are imported where they are used:
# importing vggnet touches neither disk nor network.

__all__ = ["DownloadError", "check_limits", "download_file"]

logger = logging.getLogger(__name__)

TIMEOUT = (10.0, 30.0)  # seconds: (connect, longest silence between two reads)
RETRIES = 5  # per download, after the first attempt; an attempt that received 16 MiB does not count
BACKOFF = 1.0  # seconds before the first retry, doubled each time (with jitter)
MAX_WAIT = 60.0  # cap on any single wait, Retry-After included

Timeout = float | tuple[float, float]

_PROGRESS_RESET = 16 << 20
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*")  # "bytes first-last/total"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(OSError):
    """A download failed for good: an HTTP status retrying cannot fix, too many failures, or too many bytes."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_download_error, (str(self), self.url, self.status)


def _rebuild_download_error(message: str, url: str, status: int | None) -> DownloadError:
    return DownloadError(message, url=url, status=status)


class _BadContent(DownloadError):
    """The server sent bytes that cannot be the file (too many of them): nothing received is kept."""


class _Retry(Exception):
    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


def check_limits(size: int | None, timeout: Timeout, retries: int) -> None:
    """ValueError for a size, timeout or retry count that makes no sense, before anything is fetched."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(f"size must be a positive byte count (or None if unknown), got {size!r}")
    check_int("retries", retries, least=0, what="retries after the first attempt")
    seconds = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if len(seconds) != 2 or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") for t in seconds
    ):
        raise ValueError(
            f"timeout must be a positive number of seconds or a (connect, read) pair of them, got {timeout!r}"
        )


# --- the partial file ------------------------------------------------------------------------------


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


class _Partial:
    """The file a download writes into: created private, or adopted from a dead download; flock-held."""

    def __init__(self, path: Path, file: IO[bytes], size: int, hasher: Any = None) -> None:
        self.path, self.file, self.size, self.hasher = path, file, size, _StreamHasher(hasher)

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher.close()
        self.size, self.hasher = 0, _StreamHasher()

    def close(self) -> None:
        self.hasher.close()
        self.file.close()


def _open_partial(dest: Path, key: str, *, resume: bool, limit: int | None) -> _Partial:
    if resume:
        for path in sorted(_partials(dest, key + "."), key=_size_or_zero, reverse=True):
            f = _claim(path)
            if f is None:
                continue
            hasher = hashlib.sha256()
            size = _hash_into(f, hasher)
            part = _Partial(path, f, size, hasher)
            if limit is not None and size > limit:
                part.restart()
            logger.info("resuming %s from %d bytes already on disk", dest.name, part.size)
            return part
    path = _new_partial(dest, key)
    f = _create_private(path)
    _try_flock(f.fileno())
    return _Partial(path, f, 0)


# --- the transfer ---------------------------------------------------------------------------------


def download_file(
    url: str,
    dest: Path,
    *,
    expected: str | None,
    size: int | None,
    max_size: int | None,
    progress: bool,
    timeout: Timeout,
    retries: int,
    hint: str = "",
) -> str:
    """Stream `url` into a private partial file, hashing as it arrives; verify; rename it to `dest`.

    Only a download that can be verified is resumed across calls (partials are keyed by the digest);
    on any failure but a bad digest or bad content, what was received stays as `*.partial`.
    """
    import requests
    from tqdm import tqdm

    key = _partial_key(expected)
    try:
        part = _open_partial(dest, key, resume=expected is not None, limit=size or max_size)
    except OSError as err:  # a read-only or full disk, no permission
        raise _dir_error(dest.parent, f"cannot write {dest.name} there: {err.strerror or err}") from err
    keep = expected is not None
    try:
        logger.info("downloading %s to %s", url, dest)
        bar = tqdm(
            total=size, initial=part.size, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
            file=sys.stderr, disable=None if progress else True, dynamic_ncols=True,
        )  # fmt: skip
        with requests.Session() as session, bar:
            _stream(session, url, part, bar, size=size, max_size=max_size, timeout=timeout, retries=retries)
        digest = part.hasher.hexdigest()
        if expected is not None and not digest.startswith(expected):
            keep = False
            raise ChecksumError(url, dest, expected, digest, hint=hint)  # hint "": retry
        part.file.flush()  # no fsync: a file lost in a crash fails its stamp and is fetched again
        _publish(part.path, dest)
        _write_stamp(dest, digest, checked=expected is not None)
        for stale in _partials(dest, key + "."):  # dead downloads of the same file are of no more use
            f = _claim(stale)
            if f is not None:
                stale.unlink(missing_ok=True)
                f.close()
        return digest
    except _BadContent:
        keep = False
        raise
    finally:
        if not keep or part.size == 0:
            part.path.unlink(missing_ok=True)  # still holding the flock, so no one adopts it meanwhile
        part.close()


def _stream(
    session: requests.Session,
    url: str,
    part: _Partial,
    bar: tqdm[Any],
    *,
    size: int | None,
    max_size: int | None,
    timeout: Timeout,
    retries: int,
) -> None:
    failures = 0
    while True:
        start = part.size
        try:
            _attempt(session, url, part, bar, size=size, max_size=max_size, timeout=timeout)
            return
        except _Retry as err:
            failures = 0 if part.size - start >= _PROGRESS_RESET else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"giving up on {url} after {retries} retries: {err}", url=url, status=err.status
                ) from err
            if err.retry_after is not None:
                wait = err.retry_after
            elif failures == 0:
                wait = 0.0  # the last attempt made progress: resume at once
            else:
                wait = BACKOFF * 2 ** (failures - 1) * random.uniform(0.75, 1.25)
            wait = min(wait, MAX_WAIT)
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, wait, failures, retries)
            time.sleep(wait)


def _attempt(
    session: requests.Session,
    url: str,
    part: _Partial,
    bar: tqdm[Any],
    *,
    size: int | None,
    max_size: int | None,
    timeout: Timeout,
) -> None:
    import requests

    headers = {"Accept-Encoding": "identity"}  # byte ranges and digests are of the file, not an encoding
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retry(f"connection failed ({type(err).__name__}: {err})") from err
    with resp:
        status = resp.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status} {resp.reason}", status=status, retry_after=_retry_after(resp))
        if status == 416 and part.size:  # what we hold is not a prefix of the file: start over
            part.restart()
            bar.reset(total=size)
            raise _Retry("the server refused to resume (HTTP 416); restarting from the first byte")
        if status not in (200, 206):
            raise DownloadError(
                f"HTTP {status} {resp.reason} for {url}" + (f" (redirected to {resp.url})" if resp.url != url else ""),
                url=url,
                status=status,
            )
        if status == 206 and _range_start(resp) != part.size:
            part.restart()
            bar.reset(total=size)
            raise _Retry(f"the server sent a range other than the one asked for ({resp.headers.get('Content-Range')})")
        announced = _announced_size(resp, part)
        exact = size or announced
        if size is not None and announced is not None and announced != size:
            raise _BadContent(f"{url} announces {announced} bytes but the file has {size}; nothing was kept", url=url)
        if max_size is not None and announced is not None and announced > max_size:
            raise _BadContent(f"{url} announces {announced} bytes, more than the expected {max_size}", url=url)
        limit = exact or max_size
        if exact is not None:
            bar.total = exact
        try:
            for chunk in resp.iter_content(_CHUNK):
                if limit is not None and part.size + len(chunk) > limit:
                    raise _BadContent(f"{url} sent more than the expected {limit} bytes; nothing was kept", url=url)
                part.write(chunk)
                bar.update(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            raise _Retry(f"transfer broken after {part.size} bytes ({type(err).__name__}: {err})") from err
        if exact is not None and part.size < exact:
            raise _Retry(f"the connection closed after {part.size} of {exact} bytes")


def _announced_size(resp: requests.Response, part: _Partial) -> int | None:
    """The whole file's size as the response tells it; restarts `part` if the server ignored Range."""
    length = resp.headers.get("Content-Length")
    if resp.status_code == 200:
        if part.size:
            logger.info("%s: the server ignored the Range request; restarting from the first byte", resp.url)
            part.restart()
        return int(length) if length and length.isdigit() else None
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    if match is None:
        return None
    return int(match.group(3)) if match.group(3) != "*" else int(match.group(2)) + 1


def _range_start(resp: requests.Response) -> int | None:
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
