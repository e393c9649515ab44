"""One HTTP transfer: stream into a private partial file in the destination folder, hashing as the
bytes arrive; resume with Range; retry with backoff (and Retry-After); verify; rename into place.

Everything is bounded: each read by the read timeout, the whole download (connecting, headers, retries
and waits included) by a deadline ($VGGNET_DOWNLOAD_DEADLINE seconds), a file of unknown size by
$VGGNET_DOWNLOAD_MAX_BYTES, redirects by MAX_REDIRECTS (http and https only, never from https to
http unless $VGGNET_ALLOW_HTTP_REDIRECT is set). A failure retrying cannot fix (the host name does not
resolve, the connection is refused, TLS fails) at first contact ends the call at once, saying
what to do without a network.

Plain values in (a URL, a destination path, the expected digest and size), a verified file out.
The partial file it writes into is `partial.py`'s; how partial files are named and claimed, `locks.py`'s.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from vggnet import settings
from vggnet.checks import check_int
from vggnet.errors import ChecksumError, DiskError, DownloadError, UsageError
from vggnet.hub._cache import dir_error, write_stamp
from vggnet.hub._deadline import Watch, watched_adapter
from vggnet.hub._files import CHUNK, publish
from vggnet.hub._locks import claim, partial_key, partials
from vggnet.hub._partial import DiskFull, Partial, open_partial
from vggnet.settings import ENV_ALLOW_HTTP, ENV_DEADLINE, ENV_HOME, ENV_MAX_BYTES, ENV_MIRROR, ENV_OFFLINE

if TYPE_CHECKING:
    import requests
    from tqdm import tqdm

# requests (urllib3 probes IPv6 with a socket on import) and tqdm are imported where they are used:
# importing vggnet touches neither disk nor network.

__all__ = [
    "check_limits",
    "download_file",
]

logger = logging.getLogger(__name__)

TIMEOUT = (10.0, 30.0)  # seconds: (connect, longest silence between two reads)
RETRIES = 5  # per download, after the first attempt; an attempt that received 16 MiB does not count
BACKOFF = 1.0  # seconds before the first retry, doubled each time (with jitter)
MAX_WAIT = 60.0  # cap on any single wait, Retry-After included
DEADLINE = 3600.0  # seconds for a whole download, retries included ($VGGNET_DOWNLOAD_DEADLINE)
MAX_BYTES = 2 << 30  # the most a file of unknown size may have ($VGGNET_DOWNLOAD_MAX_BYTES)
MAX_REDIRECTS = 10


Timeout = float | tuple[float, float]

_PROGRESS_RESET = 16 << 20
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*")  # "bytes first-last/total"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _BadContent(DownloadError):
    """The server sent bytes that cannot be the file (too many of them): nothing received is kept."""


class _Retry(Exception):
    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None, unfixable: bool = False
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after
        self.unfixable = unfixable  # no network, or none that reaches the host: retrying will not help


def check_limits(size: int | None, timeout: Timeout, retries: int) -> None:
    """ValueError for a size, timeout or retry count that makes no sense, before anything is fetched."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise UsageError(f"size must be a positive byte count (or None if unknown), got {size!r}")
    check_int("retries", retries, least=0, what="retries after the first attempt")
    seconds = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    if len(seconds) != 2 or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") for t in seconds
    ):
        raise UsageError(
            f"timeout must be a positive number of seconds or a (connect, read) pair of them, got {timeout!r}"
        )


# --- the transfer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One download's fixed terms: what to fetch, where it goes, its limits, its deadline and extra headers."""

    url: str
    dest: Path
    origin: str  # the URL `url` mirrors (`url` itself if none): named in the no-network advice
    size: int | None
    max_size: int  # the most bytes accepted: `max_size`, else $VGGNET_DOWNLOAD_MAX_BYTES
    timeout: Timeout
    retries: int
    watch: Watch
    headers: Mapping[str, str]  # sent to `url`'s origin only


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
    origin: str = "",
    watch: Watch | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Stream `url` into a private partial file, hashing as it arrives; verify; rename it to `dest`.

    Only a download that can be verified is resumed across calls (partials are keyed by the digest);
    on any failure but a bad digest or bad content, what was received stays as `*.partial`. A digest
    that does not match after a resumed or unsized transfer (a bad prefix, a body cut short) is
    fetched once more from the first byte before it is an error. `origin`: the URL `url` mirrors, if it does.
    `watch`: an entered `Watch` whose deadline bounds this download together with what its caller did
    before (a metadata request); without it, the download gets $VGGNET_DOWNLOAD_DEADLINE seconds of its own.
    `headers` (an Authorization) are sent to `url`'s origin only, never after a redirect to another one.
    """
    import requests

    bounded = _bounded(watch)  # the deadline runs from here, hashing a partial file to resume included
    cap = max_size or int(settings.positive_number(ENV_MAX_BYTES, MAX_BYTES))
    key = partial_key(expected)
    part = _open_part(dest, key, resume=expected is not None, limit=size or max_size)
    keep = expected is not None
    try:
        logger.info("downloading %s to %s", url, dest)
        with bounded as bound, requests.Session() as session, _bar(dest, size, part, progress) as bar:
            job = _Job(url, dest, origin or url, size, cap, timeout, retries, bound, headers or {})
            _mount(session, bound)
            digest = _transfer(session, job, part, bar, expected)
        if expected is not None and not digest.startswith(expected):
            keep = False
            raise ChecksumError(url, dest, expected, digest, hint=hint)  # hint "": retry
        _publish(part, dest, digest, key, checked=expected is not None)
        return digest
    except _BadContent:
        keep = False
        raise
    except DiskFull as err:
        keep = False
        raise _disk_full(err, part, dest, size, cap) from err
    finally:
        if not keep or part.size == 0:
            part.path.unlink(missing_ok=True)  # still holding the flock, so no one adopts it meanwhile
        part.close()


def _open_part(dest: Path, key: str, *, resume: bool, limit: int | None) -> Partial:
    try:
        return open_partial(dest, key, resume=resume, limit=limit)
    except OSError as err:  # a read-only or full disk, no permission
        raise dir_error(dest.parent, f"cannot write {dest.name} there: {err.strerror or err}") from err


def _bounded(watch: Watch | None) -> contextlib.AbstractContextManager[Watch]:
    """The caller's entered `watch`, or a new one of $VGGNET_DOWNLOAD_DEADLINE seconds from now."""
    if watch is not None:
        return contextlib.nullcontext(watch)
    seconds = settings.positive_number(ENV_DEADLINE, DEADLINE)
    return Watch(time.monotonic() + seconds, seconds)


def _bar(dest: Path, size: int | None, part: Partial, progress: bool) -> tqdm[Any]:
    from tqdm import tqdm

    return tqdm(
        total=size, initial=part.size, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
        file=sys.stderr, disable=None if progress else True, dynamic_ncols=True,
    )  # fmt: skip


def _mount(session: requests.Session, watch: Watch) -> None:
    """Every connection `session` opens reports to `watch`, which shuts it at the deadline."""
    adapter = watched_adapter()(watch)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def _transfer(session: requests.Session, job: _Job, part: Partial, bar: tqdm[Any], expected: str | None) -> str:
    """Stream the whole file into `part`; its SHA-256. A bad digest after a resumed or unsized transfer: once again."""
    again = True
    while True:
        _stream(session, job, part, bar)
        part.flush()
        if part.size == 0:
            raise _BadContent(f"{job.url} sent an empty body; nothing was kept", url=job.url)
        digest = part.hasher.hexdigest()
        if expected is None or digest.startswith(expected) or not (again and (part.resumed or part.unsized)):
            return digest
        logger.warning(
            "%s: SHA-256 %s does not match %s after a %s; downloading it again from the first byte",
            job.url, digest, expected, "resumed transfer" if part.resumed else "transfer of unknown length",
        )  # fmt: skip
        again = False
        part.restart()
        bar.reset(total=job.size)


def _publish(part: Partial, dest: Path, digest: str, key: str, *, checked: bool) -> None:
    """Rename the verified partial file to `dest`, stamp it, and remove dead downloads of the same file."""
    publish(part.file, part.path, dest)
    write_stamp(dest, digest, checked=checked, st=os.fstat(part.file.fileno()))
    for stale in partials(dest, key + "."):  # dead downloads of the same file are of no more use
        f = claim(stale)
        if f is not None:
            stale.unlink(missing_ok=True)
            f.close()


def _disk_full(err: DiskFull, part: Partial, dest: Path, size: int | None, cap: int) -> DiskError:
    need = part.total or size
    needs = f"the file needs {need:,} bytes" if need else f"the file's size is unknown (at most {cap:,} bytes)"
    return DiskError(
        errno.ENOSPC,
        f"no room to download {dest.name} into {dest.parent} ({err}): {needs}, and the {part.size:,} bytes "
        f"received were removed. Free space there, or point {ENV_HOME} at a folder with room",
    )


def _no_network_help(url: str, origin: str, dest: Path) -> str:
    return (
        f"If this machine has no network (or none that reaches {urlsplit(url).hostname}): download {origin} "
        f"elsewhere and put it in {dest.parent} as {dest.name}; or set {ENV_MIRROR} to a directory or server "
        f"that holds it; {ENV_OFFLINE}=1 uses only what is cached; weights=None (--weights none) builds the "
        "model with random weights"
    )


def _stream(session: requests.Session, job: _Job, part: Partial, bar: tqdm[Any]) -> None:
    url = job.url
    failures = 0
    received = False  # anything arrived in this call: a failure may then be a passing one
    while True:
        start = part.size
        try:
            _attempt(session, job, part, bar)
            return
        except _Retry as err:
            received = received or part.size > start
            if err.unfixable and not received:
                raise DownloadError(
                    f"cannot download {url}: {err}. {_no_network_help(url, job.origin, job.dest)}", url=url
                ) from err
            failures = 0 if part.size - start >= _PROGRESS_RESET else failures + 1
            if failures > job.retries:
                raise DownloadError(
                    f"giving up on {url} after {job.retries} retries: {err}", url=url, status=err.status
                ) from err
            if err.retry_after is not None:
                wait = err.retry_after
            elif failures == 0:
                wait = 0.0  # the last attempt made progress: resume at once
            else:
                wait = BACKOFF * 2 ** (failures - 1) * random.uniform(0.75, 1.25)
            wait = min(wait, MAX_WAIT)
            if time.monotonic() + wait >= job.watch.ends:
                raise _deadline_error(url, job.watch) from err
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, wait, failures, job.retries)
            time.sleep(wait)


def _deadline_error(url: str, watch: Watch) -> DownloadError:
    return DownloadError(
        f"giving up on {url}: the download did not finish within {watch.seconds:g} s; what arrived is kept and "
        f"resumed by the next call. Set {ENV_DEADLINE} to allow more time",
        url=url,
    )


def unfixable(err: BaseException) -> str | None:
    """What makes a connection failure one that retrying cannot fix, if it is one."""
    import requests

    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.SSLError, ssl.SSLError)):
            return "TLS failed"
        if isinstance(e, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(e, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "the network is unreachable"
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in e.args if isinstance(a, BaseException)]
    return None


def origin_of(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of `url`: where a token may be sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)


def redirect_target(url: str, current: str, location: str) -> str:
    """Where a redirect from `current` (while fetching `url`) leads; DownloadError unless http(s), never to http."""
    target = urljoin(current, location)
    scheme, was = urlsplit(target).scheme.lower(), urlsplit(current).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(
            f"{url} redirects to {target!r}, which is not an http(s) URL; nothing was downloaded", url=url
        )
    if was == "https" and scheme == "http" and not settings.allow_http_redirect():
        raise DownloadError(
            f"{url} redirects from https to plain http ({target}), where anyone on the way can read and change "
            f"it; refused. Set {ENV_ALLOW_HTTP}=1 to allow it (a pinned sha256 still checks the bytes)",
            url=url,
        )
    return target


def _get(
    session: requests.Session, url: str, headers: dict[str, str], timeout: Timeout, extra: Mapping[str, str]
) -> requests.Response:
    """GET `url`, following redirects by hand: http(s) only, never https -> http unless allowed, MAX_REDIRECTS.

    `extra` headers (an Authorization) go to `url`'s origin (scheme, host, port) only.
    """
    import requests
    import urllib3

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        sent = {**extra, **headers} if extra and origin_of(current) == origin_of(url) else headers
        try:
            resp = session.get(current, headers=sent, stream=True, timeout=timeout, allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as err:
            why = unfixable(err)
            raise _Retry(
                f"{why or 'connection failed'} ({type(err).__name__}: {err})", unfixable=why is not None
            ) from err
        except (requests.RequestException, urllib3.exceptions.HTTPError, ValueError) as err:
            raise DownloadError(f"cannot download {url}: {err}", url=url) from err
        if not resp.is_redirect:
            return resp
        location = resp.headers["Location"]
        resp.close()
        current = redirect_target(url, current, location)
    raise DownloadError(f"{url} redirects more than {MAX_REDIRECTS} times (a redirect loop?); last: {current}", url=url)


def _attempt(session: requests.Session, job: _Job, part: Partial, bar: tqdm[Any]) -> None:
    """One GET (resuming with Range from what `part` holds), its answer checked, its body written into `part`."""
    with _request(session, job, part) as resp:
        exact = _accept(resp, job, part, bar)
        _receive(resp, job, part, bar, exact)


def _request(session: requests.Session, job: _Job, part: Partial) -> requests.Response:
    """The GET, within what is left of the deadline; its headers are only read once they came in time."""
    left = job.watch.ends - time.monotonic()
    if left <= 0:
        raise _deadline_error(job.url, job.watch)
    headers = {"Accept-Encoding": "identity"}  # byte ranges and digests are of the file, not an encoding
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    connect, read = job.timeout if isinstance(job.timeout, tuple) else (job.timeout, job.timeout)
    try:  # a connection under way has no socket the watch can shut yet: its own timeout must end in time
        resp = _get(session, job.url, headers, (min(connect, max(left, 0.01)), read), job.headers)
    except _Retry as err:
        if job.watch.expired.is_set():
            raise _deadline_error(job.url, job.watch) from err
        raise
    if job.watch.expired.is_set():  # the headers may have been cut short: nothing in them can be trusted
        resp.close()
        raise _deadline_error(job.url, job.watch)
    return resp


def _accept(resp: requests.Response, job: _Job, part: Partial, bar: tqdm[Any]) -> int | None:
    """Check the response's status and sizes (restarting `part` where it must); the file's exact size, if known."""
    url, size, status = job.url, job.size, resp.status_code
    where = f" (redirected to {resp.url})" if resp.url != url else ""
    if status in _RETRY_STATUS or status >= 500:
        raise _Retry(f"HTTP {status} {resp.reason}{where}", status=status, retry_after=_retry_after(resp))
    if status == 416 and part.size:  # what we hold is not a prefix of the file: start over
        part.restart()
        bar.reset(total=size)
        raise _Retry("the server refused to resume (HTTP 416); restarting from the first byte")
    if status not in (200, 206):
        raise DownloadError(f"HTTP {status} {resp.reason} for {url}{where}", url=url, status=status)
    encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    if status == 206 and (_range_start(resp) != part.size or encoded):
        part.restart()
        bar.reset(total=size)
        raise _Retry(f"the server sent a range other than the one asked for ({resp.headers.get('Content-Range')})")
    announced = None if encoded else _announced_size(resp, url)  # an encoding's length is not the file's
    if status == 200 and part.size:
        logger.info("%s: the server ignored the Range request; restarting from the first byte", url)
        part.restart()
    if status == 206 and part.size:
        part.resumed = True
    exact = size or announced
    if size is not None and announced is not None and announced != size:
        raise _BadContent(f"{url} announces {announced} bytes but the file has {size}; nothing was kept", url=url)
    if announced is not None and announced > job.max_size:
        raise _BadContent(
            f"{url} announces {announced} bytes, more than the expected {job.max_size}{_cap_hint(size)}", url=url
        )
    part.total = exact
    part.unsized = part.unsized or exact is None
    if exact is not None:
        bar.total = exact
    return exact


def _receive(resp: requests.Response, job: _Job, part: Partial, bar: tqdm[Any], exact: int | None) -> None:
    """Write the body into `part`, never past the file's size (or the cap); a cut body is a retry."""
    import requests

    url, limit = job.url, exact or job.max_size
    try:
        for chunk in resp.iter_content(CHUNK):  # decoded, if the server encoded it anyway
            if part.size + len(chunk) > limit:
                raise _BadContent(
                    f"{url} sent more than the expected {limit} bytes{_cap_hint(exact)}; nothing was kept", url=url
                )
            part.write(chunk)
            bar.update(len(chunk))
    except requests.exceptions.ContentDecodingError as err:
        raise DownloadError(f"cannot download {url}: its body does not decode as announced ({err})", url=url) from err
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        if job.watch.expired.is_set():
            raise _deadline_error(url, job.watch) from err
        raise _Retry(f"transfer broken after {part.size} bytes ({type(err).__name__}: {err})") from err
    if job.watch.expired.is_set():  # the cut looked like the end of a body of unknown length
        raise _deadline_error(url, job.watch)
    if exact is not None and part.size < exact:
        raise _Retry(f"the connection closed after {part.size} of {exact} bytes")


def _cap_hint(size: int | None) -> str:
    return "" if size is not None else f" (files of unknown size stop at {ENV_MAX_BYTES}, {MAX_BYTES:,} by default)"


def _announced_size(resp: requests.Response, url: str) -> int | None:
    """The whole file's size as the response tells it; DownloadError for Content-Length values that disagree."""
    length = resp.headers.get("Content-Length")
    if resp.status_code == 200:
        values = {v.strip() for v in (length or "").split(",")}
        if len(values) > 1:
            raise DownloadError(
                f"{url} sent several different Content-Length headers ({length}); nothing was kept", url=url
            )
        value = values.pop()
        return int(value) if value.isdigit() else None
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
