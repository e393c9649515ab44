"""Fetch, verify, cache and load checkpoints: everything in vggnet that touches files or the network.

The flow: a record or URL -> `fetch` (a cache hit vouched for by a stamp, or a download hashed while
it streams) -> a verified file -> `torch.load(weights_only=True)`, memory-mapped -> a state dict.

What a cache directory holds for a checkpoint NAME:

- `NAME`: the verified file; it only ever appears by an atomic rename of a fully checked download.
- `NAME.stamp`: JSON with the file's size, mtime, ctime, inode and full SHA-256, and `checked`:
  whether that digest matched an expected one (a download with no digest to check is not). A cache
  hit whose stat still matches its stamp is trusted without hashing; any other file is hashed again.
- `NAME.lock`: the lock held while NAME is downloaded or converted, so only one process downloads.
- `NAME.<digest>.<id>.partial` (`<digest>`: 8 to 16 hex digits or "unverified", `<id>`: 8 hex
  digits): what an interrupted download received (private to the user); the next call that wants
  the same digest hashes it and resumes with a Range request. A running download holds its flock.
- `NAME.zip` and its stamp (which names the source's digest): a zip-format copy of a legacy-format
  (pre-1.6) NAME, written once so that later loads can memory-map it.
- `NAME.corrupt-<YYYYmmdd-HHMMSS>-<4 hex>`: a cached file whose bytes stopped matching, moved aside.

Only these exact names are vggnet's: the default cache is torch.hub's, shared with torchvision,
whose own files (its `*.partial` temporaries included) are left alone.

A local source (a plain path, `file://`) is verified in place, never copied; its stamp lives in the
cache directory under `.stamps/`. A `VGGNET_MIRROR` directory is the same, after the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import queue
import random
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import torch

from .checks import check_int
from .weights import normalize_digest

if TYPE_CHECKING:
    import filelock
    import requests
    from tqdm import tqdm

    from .weights import Weights

# requests (urllib3 probes IPv6 with a socket on import), filelock and tqdm are imported where they
# are used: importing vggnet touches neither disk nor network.

__all__ = [
    "CachedFile",
    "ChecksumError",
    "DownloadError",
    "Removed",
    "add_to_mirror",
    "cache_dir",
    "cached_files",
    "fetch",
    "file_name_from_url",
    "load_state_dict_from_url",
    "load_weights",
    "remove_cached",
    "verify_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "VGGNET_HOME"
ENV_MIRROR = "VGGNET_MIRROR"
ENV_OFFLINE = "VGGNET_OFFLINE"
OFFICIAL_BASE = "https://download.pytorch.org/models/"

TIMEOUT = (10.0, 30.0)  # seconds: (connect, longest silence between two reads)
RETRIES = 5  # per download, after the first attempt; an attempt that received 16 MiB does not count
BACKOFF = 1.0  # seconds before the first retry, doubled each time (with jitter)
MAX_WAIT = 60.0  # cap on any single wait, Retry-After included
LOCK_STALL = 120.0  # give up waiting for another process's download after this long without progress

MapLocation = str | torch.device | None
Timeout = float | tuple[float, float]
Progress = Callable[[int], object]  # called with the byte count of each chunk hashed

_CHUNK = 1 << 20
_PROGRESS_RESET = 16 << 20
_MiB = 1 << 20
_NAME_DIGEST = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's "name-<hex>.pth" convention
_ZIP_MAGIC = b"PK\x03\x04"
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*")  # "bytes first-last/total"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ChecksumError(RuntimeError):
    """A file's SHA-256 is not the expected one: it was not kept under its final name, nor loaded.

    A RuntimeError, as torch.hub's "invalid hash value" is, so code written for torch.hub still catches it.
    """

    def __init__(
        self, url: str, path: str | os.PathLike[str], expected: str, actual: str, detail: str = "", hint: str = ""
    ) -> None:
        self.url = url
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        self.detail = detail or "no file was kept"
        self.hint = hint or _RETRY_HINT
        what = "SHA-256" if len(expected) == 64 else f"SHA-256 prefix ({len(expected)} hex digits)"
        super().__init__(
            f"checksum mismatch for {url} ({self.path}): expected {what} {expected}, got {actual}; {self.detail}. "
            f"{self.hint}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.url, str(self.path), self.expected, self.actual, self.detail, self.hint)


# What a ChecksumError advises, by where the expected digest came from and whether retrying can help.
_RETRY_HINT = (
    "The transfer was corrupted or the file is not the one the record describes: retry, "
    "and check the URL, the mirror (VGGNET_MIRROR) and the digest."
)
_LOCAL_HINT = (
    "The file is not the one the digest describes: replace it with a good copy, or check the path "
    "(VGGNET_MIRROR, for a mirror) and the digest."
)
_NAME_HINT = (
    "The expected digest is the hex part of the file name, torch.hub's name-<sha256 prefix>.pth convention; "
    "if the name only looks like one, pass sha256= (--sha256) with the real digest, or file_name=."
)


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


def cache_dir() -> Path:
    """Where checkpoints are cached: $VGGNET_HOME, else torch.hub's checkpoint directory.

    torch.hub's directory is `$TORCH_HOME/hub/checkpoints` (default `~/.cache/torch/hub/checkpoints`),
    shared with torchvision. Nothing is created here; the first download creates the directory.
    """
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    return _torch_hub_checkpoints()


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


# --- public entry points ---------------------------------------------------------------------------


def load_weights(
    weights: Weights, *, progress: bool = True, map_location: MapLocation = None
) -> dict[str, torch.Tensor]:
    """The state dict of a record: found in the cache or downloaded, verified, loaded with weights_only=True.

    Official records are fetched from `VGGNET_MIRROR` when it is set. With `VGGNET_HOME` set, a file
    of the same name in torch.hub's cache is reused (hard-linked or copied in) once its digest matches.
    """
    name = weights.file_name
    url = _mirrored(weights.url, name)
    bound = None
    if weights.is_official and weights.size is None and weights.file_size is not None:
        bound = int(weights.file_size * _MiB) + 1024  # torchvision's MiB figure is rounded to 3 decimals
    where = cache_dir()
    path, digest = _fetch(
        url,
        expected=weights.sha256,
        size=weights.size,
        max_size=bound,
        dest=where / name,
        progress=progress,
        timeout=TIMEOUT,
        retries=RETRIES,
        origin=weights.url,
        look_aside=_look_aside(),
    )
    return _load(path, digest, where=where, map_location=map_location)


def fetch(
    url: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    file_name: str | None = None,
    progress: bool = True,
    timeout: Timeout = TIMEOUT,
    retries: int = RETRIES,
) -> Path:
    """The path of a verified copy of `url`: a cache hit, a fresh download, or a local file checked in place.

    `url` is https, http, `file://` or a local path (verified where it is, not copied). `sha256` is the
    full digest or a hex prefix of at least 8 digits; without it the prefix in a torch.hub-style name
    (`name-<hex>.pth`) is checked, and with neither a warning says nothing could be verified. `size`
    (bytes), when known, is enforced. `timeout` is (connect, read) seconds or one number for both;
    `retries` bounds the retries after connection errors, 5xx and 429. Raises `ChecksumError`,
    `DownloadError`, `FileNotFoundError` (offline and not cached) or `ValueError` (a hostile name).
    """
    path, _ = _fetch_url(
        url, sha256=sha256, size=size, model_dir=model_dir, file_name=file_name,
        progress=progress, timeout=timeout, retries=retries,
    )  # fmt: skip
    return path


def load_state_dict_from_url(
    url: str,
    *,
    sha256: str | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    map_location: MapLocation = None,
    progress: bool = True,
    file_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """torch.hub's function of the same name, stricter: verified (see `fetch`), weights only, memory-mapped.

    The checkpoint must be a state dict (a mapping of names to tensors); a dict that holds one under
    "state_dict" or "model" (a training checkpoint) is unwrapped. A checkpoint carrying pickled code
    is refused before any of it runs.
    """
    path, digest = _fetch_url(
        url, sha256=sha256, size=None, model_dir=model_dir, file_name=file_name,
        progress=progress, timeout=TIMEOUT, retries=RETRIES,
    )  # fmt: skip
    where = Path(model_dir) if model_dir is not None else cache_dir()
    return _load(path, digest, where=where, map_location=map_location)


def add_to_mirror(weights: Weights, folder: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """`weights`' file, verified, under its own name in `folder`, a directory `VGGNET_MIRROR` can point at.

    A copy in the cache that matches the record is hard-linked (or copied); otherwise (none, or one
    that no longer matches and is moved aside) the file is downloaded straight into `folder`.
    """
    folder = Path(folder)
    dest = folder / weights.file_name
    path = _cached_copy(weights)
    if path is None:
        path = fetch(
            weights.url,
            sha256=weights.sha256,
            size=weights.size,
            model_dir=folder,
            file_name=weights.file_name,
            progress=progress,
        )
    if path.resolve() != dest.resolve():  # the cache's copy, or a VGGNET_MIRROR folder's (checked in place)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(dest)
        try:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        path = fetch(str(dest), sha256=weights.sha256, size=weights.size, model_dir=folder, progress=progress)
    return path


def _cached_copy(weights: Weights) -> Path | None:
    """The cache's copy of `weights`' file if it matches the record; one that does not is moved aside."""
    cached = cache_dir() / weights.file_name
    if not cached.is_file():
        return None
    with _lock(cached, create=False):
        digest = _cached_digest(cached, weights.sha256, weights.url)
    if digest is None:
        logger.warning("the cached %s does not match its record; fetching %s instead", cached.name, weights.url)
        return None
    return cached


def _fetch_url(
    url: str,
    *,
    sha256: str | None,
    size: int | None,
    model_dir: str | os.PathLike[str] | None,
    file_name: str | None,
    progress: bool,
    timeout: Timeout,
    retries: int,
) -> tuple[Path, str]:
    name = _safe_name(file_name, source="file_name") if file_name is not None else file_name_from_url(url)
    _check_limits(size, timeout, retries)
    from_name = False
    if sha256 is not None:
        expected: str | None = normalize_digest(sha256.strip())
    elif _local_path(url) is not None:
        expected = None  # the name of one's own file is no promise: "-20240101." is a date, not a digest
    else:
        match = _NAME_DIGEST.search(name)
        expected = match.group(1) if match else None
        from_name = expected is not None
        if expected is None:
            logger.warning(
                "%s: no sha256 given and no hex digest in the file name %r, so the file cannot be verified; "
                "pass sha256= to check it",
                url, name,
            )  # fmt: skip
    dest_dir = Path(model_dir) if model_dir is not None else cache_dir()
    return _fetch(
        _mirrored(url, name),
        expected=expected,
        size=size,
        max_size=None,
        dest=dest_dir / name,
        progress=progress,
        timeout=timeout,
        retries=retries,
        origin=url,
        look_aside=_look_aside() if model_dir is None else None,
        download_hint=_NAME_HINT if from_name else "",
    )


def _check_limits(size: int | None, timeout: Timeout, retries: int) -> None:
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


# --- what a cache folder holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class CachedFile:
    """A file in a cache or mirror folder, with the stamp and lock that serve it (see the module docstring)."""

    path: Path
    kind: str  # "checkpoint" (any file but vggnet's bookkeeping), "zip copy", "partial" or "corrupt"
    base: str  # the name of the checkpoint it belongs to (its own name for a checkpoint)
    size: int  # bytes
    related: tuple[Path, ...]  # its NAME.stamp and NAME.lock, where present: removed with it
    sha256: str | None  # the digest its stamp recorded when it was last hashed
    checked: bool = False  # that digest matched an expected one (or is of a zip copy vggnet wrote)

    @property
    def name_digest(self) -> str | None:
        """The SHA-256 prefix in a checkpoint's torch.hub-style name (`name-<hex>.pth`), which `fetch` checks."""
        match = _NAME_DIGEST.search(self.path.name) if self.kind == "checkpoint" else None
        return match.group(1) if match else None

    @property
    def ours(self) -> bool:
        """vggnet wrote or verified it: a file with a stamp, a zip copy, a partial download, a corrupt copy.

        A file without a stamp may be torchvision's or anyone's (the default cache is torch.hub's).
        """
        return self.kind != "checkpoint" or self.sha256 is not None


@dataclass(frozen=True)
class Removed:
    """What `remove_cached` deleted, and what it left because another live process holds it."""

    files: tuple[CachedFile, ...]
    skipped: tuple[Path, ...]  # the partial file of a running download, a lock a process holds

    @property
    def freed(self) -> int:
        return sum(entry.size for entry in self.files)


# vggnet's own names (the module docstring); anything else in a folder is a plain file, whatever its name.
_PARTIAL = re.compile(r"(.+)\.(?:[0-9a-f]{8,16}|unverified)\.[0-9a-f]{8}\.partial")  # see _open_partial
_CORRUPT = re.compile(r"(.+)\.corrupt-\d{8}-\d{6}-[0-9a-f]{4}")  # see _cached_digest


def cached_files(folder: str | os.PathLike[str] | None = None) -> list[CachedFile]:
    """The files in `folder` (default: the cache directory) in name order, each with its stamp and lock.

    Only vggnet's own names are taken for bookkeeping: `NAME.<digest>.<id>.partial`,
    `NAME.corrupt-<time>-<id>`, and `NAME.zip` with the stamp vggnet wrote for it. Any other file
    (torch.hub's own `*.partial` included) is a "checkpoint" of its own name. Hidden files
    (temporaries, the local files' `.stamps/`) are left out; a missing folder holds nothing, and a
    file in its place is an error naming it (and VGGNET_HOME, when that is what points there).
    """
    where = cache_dir() if folder is None else Path(folder)
    try:
        with os.scandir(where) as it:
            entries = sorted(it, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError as err:
        raise _dir_error(where, "it is not a directory") from err
    present = {entry.name for entry in entries}
    found: list[CachedFile] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith((".stamp", ".lock")):
            continue
        try:
            if not entry.is_file():
                continue
            size = entry.stat().st_size
        except FileNotFoundError:  # removed since the listing
            continue
        path = where / name
        stamp = _read_stamp(_stamp_of(path)) if f"{name}.stamp" in present else None
        kind, base = _kind_of(name, stamp)
        related = tuple(where / f"{name}{suffix}" for suffix in (".stamp", ".lock") if f"{name}{suffix}" in present)
        digest = str(stamp["sha256"]) if stamp is not None else None
        checked = stamp is not None and stamp.get("checked") is True
        found.append(CachedFile(path, kind, base, size, related, digest, checked))
    return found


def _kind_of(name: str, stamp: dict[str, Any] | None) -> tuple[str, str]:
    """(kind, the checkpoint it belongs to) of a file named `name` whose stamp (if any) is `stamp`."""
    for kind, pattern in (("partial", _PARTIAL), ("corrupt", _CORRUPT)):
        match = pattern.fullmatch(name)
        if match:
            return kind, match.group(1)
    if name.endswith(".zip") and stamp is not None and "source_sha256" in stamp:  # written by _convert
        return "zip copy", name[: -len(".zip")]
    return "checkpoint", name


def remove_cached(*names: str, folder: str | os.PathLike[str] | None = None, local_stamps: bool = False) -> Removed:
    """Delete `names` (as `cached_files` lists them) from `folder` (default: the cache directory).

    A checkpoint's name takes all that belongs to it: stamp, lock, zip copy, partial downloads,
    corrupt copies. The name of a zip copy, partial or corrupt copy takes only that file (and its
    stamp and lock). What another live process holds (the partial file of a running download, a
    held lock) is left in place and listed in `skipped`. `local_stamps=True` also forgets the
    digests recorded for local files (`.stamps/`), which are then hashed again on their next use.
    Names that are not in the folder are ignored.
    """
    where = cache_dir() if folder is None else Path(folder)
    removed: list[CachedFile] = []
    skipped: list[Path] = []
    for entry in cached_files(where):
        if entry.base not in names and entry.path.name not in names:
            continue
        held = [path for path in (entry.path, *entry.related) if not _remove(path)]
        skipped.extend(held)
        if entry.path not in held:
            removed.append(entry)
    for name in names:  # the stamp and lock of a checkpoint that is not (or no longer) there
        for path in (where / f"{name}.stamp", where / f"{name}.lock"):
            if not (where / name).exists() and path.exists() and path not in skipped and not _remove(path):
                skipped.append(path)
    if local_stamps:
        shutil.rmtree(where / ".stamps", ignore_errors=True)
    return Removed(tuple(removed), tuple(skipped))


def _remove(path: Path) -> bool:
    """Delete `path`; False, leaving it, if it is a partial download or lock that a live process holds."""
    if not path.name.endswith((".partial", ".lock")):
        path.unlink(missing_ok=True)
        return True
    if sys.platform == "win32":  # no flock there, but a file another process has open cannot be deleted
        try:
            path.unlink(missing_ok=True)
        except PermissionError:
            return False
        return True
    f = _claim(path)
    if f is None:  # a running download or a lock holder has its flock on it, unless it is gone
        return not path.exists()
    with f:
        path.unlink(missing_ok=True)
    return True


def verify_file(path: str | os.PathLike[str], expected: str | None = None, *, progress: Progress | None = None) -> str:
    """`path`'s full SHA-256, hashed afresh: no stamp is trusted or written. `progress` sees each chunk's size.

    Raises `ChecksumError` (with `.actual`) if the digest does not start with `expected`, a digest or its prefix.
    """
    digest = _hash_file(Path(path), progress)
    if expected is not None and not digest.startswith(expected):
        raise ChecksumError(str(path), path, expected, digest, detail="the file was left where it is", hint=_LOCAL_HINT)
    return digest


# --- names, sources and mirrors --------------------------------------------------------------------


def _safe_name(name: str, *, source: str) -> str:
    """`name` percent-decoded, or a ValueError if it could name anything but a plain file in one folder."""
    decoded = unquote(name)
    bad = (
        not decoded
        or decoded.startswith(".")  # ".", "..", hidden files, and our own temporary names
        or any(c in decoded for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 for c in decoded)
        or len(decoded.encode("utf-8", "surrogatepass")) > 200  # room for our suffixes within NAME_MAX
    )
    if bad:
        raise ValueError(
            f"refusing the file name {decoded!r} taken from {source}: a checkpoint name must be a plain "
            "file name (no path separators, no leading dot, no control characters, at most 200 bytes); "
            "pass file_name= with a name such as 'model-1a2b3c4d.pth'"
        )
    return decoded


def file_name_from_url(url: str) -> str:
    """The file name a URL is cached under: its last path segment, percent-decoded; ValueError if hostile.

    The segment is taken before decoding, so "a%2F..%2Fb" is refused, not shortened to "b".
    """
    return _safe_name(urlsplit(url).path.rsplit("/", 1)[-1], source=repr(url))


def _local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URLs must name a local file (file:///path), got {url!r}")
        return Path(unquote(parts.path))
    if scheme == "" or (len(scheme) == 1 and sys.platform == "win32"):  # a plain path, or a drive letter
        return Path(url).expanduser()
    raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}; use https, http, file:// or a local path")


def _mirrored(url: str, name: str) -> str:
    """`url` with the official base replaced by $VGGNET_MIRROR (a base URL or a local directory)."""
    mirror = os.environ.get(ENV_MIRROR)
    if not mirror or not url.startswith(OFFICIAL_BASE):
        return url
    scheme = urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + quote(name)
    try:
        folder = _local_path(mirror)  # a directory (or drive letter), else the unsupported scheme
    except ValueError as err:
        raise ValueError(
            f"{ENV_MIRROR}={mirror!r} has the unsupported scheme {scheme!r}: set it to a base URL "
            "(https://..., http://..., file:///...) or a local directory, or unset it"
        ) from err
    assert folder is not None  # http(s) was handled above
    return str(folder / name)


def _look_aside() -> Path | None:
    """torch.hub's checkpoint directory when VGGNET_HOME moved the cache elsewhere, else None."""
    if not os.environ.get(ENV_HOME):
        return None
    torch_dir = _torch_hub_checkpoints()
    return None if _same_dir(torch_dir, cache_dir()) else torch_dir


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# --- the fetch: cache hit, look-aside, offline, or download ----------------------------------------


def _fetch(
    url: str,
    *,
    expected: str | None,
    size: int | None,
    max_size: int | None,
    dest: Path,
    progress: bool,
    timeout: Timeout,
    retries: int,
    origin: str,
    look_aside: Path | None,
    download_hint: str = "",
) -> tuple[Path, str]:
    """(verified path, its full SHA-256). `url` may be a VGGNET_MIRROR copy of `origin`.

    `download_hint` replaces the retry advice of a downloaded file's ChecksumError (where the
    expected digest came from); a cached or local file's mismatch keeps its own advice.
    """
    local = _local_path(url)
    stamps = dest.parent / ".stamps"
    if local is not None and url == origin:  # the caller's own file: verified where it is
        return local, _verify_local(local, expected, url, size=size, stamps=stamps)
    digest = _stamped_digest(dest, expected=expected)  # the fast path: no hashing, no lock
    if digest is not None and _matches(digest, expected):
        _warn_unverified(expected, dest)
        return dest, digest
    offline = _offline()
    _check_dir(dest.parent, create=local is None and not offline)
    with _lock(dest, create=False):
        digest = _cached_digest(dest, expected, url)
        if digest is not None:
            _warn_unverified(expected, dest)
            return dest, digest
        if look_aside is not None and expected is not None:
            digest = _adopt(look_aside / dest.name, dest, expected)
            if digest is not None:
                return dest, digest
        if local is not None:  # a VGGNET_MIRROR directory: checked where it is, not copied
            if not local.is_file():
                raise FileNotFoundError(
                    f"{dest.name} is neither in the cache ({dest.parent}) nor in the mirror "
                    f"{ENV_MIRROR}={os.environ.get(ENV_MIRROR)} (no file {local}): put it there "
                    f"('vggnet download --to DIR' builds a mirror), or unset {ENV_MIRROR} to download {origin}"
                )
            return local, _verify_local(local, expected, url, size=size, stamps=stamps)
        if offline:
            raise FileNotFoundError(
                f"{dest.name} is not in the cache and {ENV_OFFLINE} is set, so it was not downloaded: "
                f"download {origin} and put it in {dest.parent} (or point {ENV_MIRROR} at a directory holding it)"
            )
        return dest, _download(url, dest, expected=expected, size=size, max_size=max_size,
                               progress=progress, timeout=timeout, retries=retries, hint=download_hint)  # fmt: skip


def _matches(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected)


def _warn_unverified(expected: str | None, path: Path) -> None:
    if expected is None:
        logger.warning("%s: using the cached file unverified (no digest to check it against)", path)


def _cached_digest(dest: Path, expected: str | None, url: str) -> str | None:
    """The digest of a cached file that matches `expected`; a mismatching file is moved aside (None)."""
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        return None
    digest = _digest(dest, _stamp_of(dest), expected)
    if _matches(digest, expected):
        return digest
    assert expected is not None  # _matches is True without an expectation
    # Move aside only the file we hashed: another process may have put a good one in place since.
    if os.stat(dest).st_ino != st.st_ino:
        return _cached_digest(dest, expected, url)
    aside = dest.with_name(f"{dest.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    os.replace(dest, aside)
    _stamp_of(dest).unlink(missing_ok=True)
    logger.warning("%s: SHA-256 %s does not match %s; moved it aside to %s", dest, digest, expected, aside.name)
    if _offline():
        raise ChecksumError(
            url, dest, expected, digest,
            detail=f"the cached file was moved aside to {aside} and, with {ENV_OFFLINE} set, not fetched again",
            hint=f"Unset {ENV_OFFLINE} to download a good copy, or put one in {dest.parent}.",
        )  # fmt: skip
    return None


def _verify_local(path: Path, expected: str | None, url: str, *, size: int | None, stamps: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} (from {url!r}) is not a file")
    key = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:32]
    digest = _digest(path, stamps / f"{key}.json", expected)
    left = "the file was left where it is and not loaded"
    if not _matches(digest, expected):
        assert expected is not None
        raise ChecksumError(url, path, expected, digest, detail=left, hint=_LOCAL_HINT)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ValueError(f"{path} has {actual:,} bytes, not the {size:,} that size= says; {left}")
    if expected is None:
        logger.warning("%s: loading a local file unverified (no digest to check it against)", path)
    return digest


def _check_dir(folder: Path, *, create: bool) -> None:
    """Make sure `folder` can hold the cache (creating it if asked): an error naming it and the fix if not."""
    if folder.exists() and not folder.is_dir():
        raise _dir_error(folder, "it is not a directory")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _dir_error(folder, f"cannot create it: {err.strerror or err}") from err


def _dir_error(folder: Path, problem: str) -> OSError:
    home = os.environ.get(ENV_HOME)
    if _same_dir(folder, cache_dir()):
        what = f"the cache directory {ENV_HOME}={home}" if home else f"the cache directory {folder} (torch.hub's)"
        fix = f"point {ENV_HOME} at one, or unset it to use torch.hub's" if home else f"set {ENV_HOME} to one"
    else:
        what, fix = f"the directory {folder}", "choose another (model_dir=, --to)"
    return OSError(f"{what} cannot hold checkpoints: {problem}. It must be a writable directory; {fix}")


def _adopt(src: Path, dest: Path, expected: str) -> str | None:
    """Hard-link (or copy) a file from torch.hub's cache into ours, if its digest matches."""
    if not src.is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)  # offline, nothing else has created it
    tmp = _temp_name(dest)
    try:
        try:
            os.link(src, tmp)  # hash the linked inode, not the name, so what is checked is what is kept
            digest = _hash_file(tmp)
        except OSError:
            digest = _copy_hashing(src, tmp)
        if not digest.startswith(expected):
            logger.warning("ignoring %s: its SHA-256 %s does not match %s", src, digest, expected)
            return None
        os.replace(tmp, dest)
        _write_stamp(dest, digest, checked=True)
        logger.info("reused %s from torch.hub's cache (SHA-256 verified)", src)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


# --- stamps and hashing ----------------------------------------------------------------------------


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    # ctime cannot be set by utime, so a byte changed in place is seen even when mtime was restored.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_stamp(stamp: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None


def _stamp_matches(stamp: dict[str, Any] | None, path: Path) -> bool:
    try:
        fields = _stat_fields(os.stat(path))
    except OSError:
        return False
    return stamp is not None and all(stamp.get(k) == v for k, v in fields.items())


def _write_stamp(path: Path, digest: str, stamp: Path | None = None, *, checked: bool, **extra: str) -> None:
    """Record `path`'s stat and digest. A cache we cannot write to only costs a re-hash next time.

    `checked` says the digest matched an expected one (a record's, a sha256 argument, a torch.hub
    name's) or is of bytes vggnet wrote itself; only then may `vggnet verify` take it as the reference.
    """
    stamp = stamp or _stamp_of(path)
    tmp = _temp_name(stamp)
    try:
        data = {"file": str(path), **_stat_fields(os.stat(path)), "sha256": digest, "checked": checked, **extra}
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError as err:
        logger.debug("could not write %s: %s", stamp, err)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _stamped_digest(path: Path, stamp_path: Path | None = None, expected: str | None = None) -> str | None:
    """The digest `path`'s stamp records, while the stamp still describes it; else None.

    A stamp whose digest matches `expected` is marked checked, if it was not yet.
    """
    stamp_path = stamp_path or _stamp_of(path)
    stamp = _read_stamp(stamp_path)
    if stamp is None or not _stamp_matches(stamp, path):
        return None
    digest = str(stamp["sha256"])
    if expected is not None and stamp.get("checked") is not True and digest.startswith(expected):
        _write_stamp(path, digest, stamp_path, checked=True)
    return digest


def _digest(path: Path, stamp_path: Path, expected: str | None) -> str:
    """`path`'s full SHA-256: from its stamp while the stamp still describes it, else hashed (and stamped).

    The stamp records whether the digest matched `expected` (see `_write_stamp`).
    """
    digest = _stamped_digest(path, stamp_path, expected)
    if digest is None:
        digest = _hash_file(path)
        _write_stamp(path, digest, stamp_path, checked=expected is not None and digest.startswith(expected))
    return digest


def _hash_file(path: Path, progress: Progress | None = None) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        _hash_into(f, hasher, progress)
    return hasher.hexdigest()


def _hash_into(f: IO[bytes], hasher: Any, progress: Progress | None = None) -> int:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(view)  # type: ignore[attr-defined]
        if not n:
            return total
        hasher.update(view[:n])
        total += n
        if progress is not None:
            progress(n)


def _copy_hashing(src: Path, dst: Path) -> str:
    hasher = hashlib.sha256()
    with open(src, "rb") as fin, _create_private(dst) as fout:
        while chunk := fin.read(_CHUNK):
            hasher.update(chunk)
            fout.write(chunk)
    return hasher.hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_private(path: Path) -> IO[bytes]:
    """A new file only its owner can read (0600), opened for reading and writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    return os.fdopen(fd, "r+b")


def _publish(tmp: Path, dest: Path) -> None:
    """Make a verified private file readable like any downloaded file, then rename it into place."""
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


# --- locks -----------------------------------------------------------------------------------------


def _try_flock(fd: int) -> bool:
    """Take an exclusive, non-blocking flock; False if someone holds it or the platform cannot."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _lock(dest: Path, *, create: bool = True) -> Iterator[None]:
    """Hold `dest.lock` so one process at a time downloads or converts `dest`.

    The lock only saves bandwidth and time: a holder that died releases it with its file
    descriptors, and a holder that stopped making progress for LOCK_STALL seconds (or a directory
    where no lock can be taken) is waited for no longer. Correctness comes from the private
    temporary files and atomic renames.
    """
    import filelock

    lock: filelock.BaseFileLock | None = None
    try:
        if create:
            dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.parent.is_dir():
            lock = filelock.FileLock(str(dest) + ".lock")
            lock.acquire(timeout=0)
    except filelock.Timeout:
        assert lock is not None
        lock = _wait_for(lock, dest)
    except OSError as err:
        logger.warning("cannot lock %s (%s); going on without the lock", dest, err)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _wait_for(lock: filelock.BaseFileLock, dest: Path) -> filelock.BaseFileLock | None:
    import filelock

    logger.info("waiting for another process to finish %s", dest)
    mark, since = _partial_bytes(dest), time.monotonic()
    while True:
        try:
            lock.acquire(timeout=1.0)
            return lock
        except filelock.Timeout:
            now = _partial_bytes(dest)
            if now != mark:
                mark, since = now, time.monotonic()
            elif time.monotonic() - since > LOCK_STALL:
                logger.warning("the process holding %s.lock made no progress for %.0f s; going on", dest, LOCK_STALL)
                return None


def _partial_bytes(dest: Path) -> int:
    return sum(_size_or_zero(p) for p in _partials(dest, ""))


# --- the download ----------------------------------------------------------------------------------


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


def _partials(dest: Path, key: str) -> list[Path]:
    prefix = f"{dest.name}.{key}"
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return []
    return [dest.parent / n for n in names if n.startswith(prefix) and n.endswith(".partial")]


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _claim(path: Path) -> IO[bytes] | None:
    """Open and flock another download's partial file, if its writer is gone and it is still there."""
    try:
        f = open(path, "r+b")  # noqa: SIM115 (handed to the caller)
    except OSError:
        return None
    try:
        # Between open and flock the writer may have finished and renamed the file into place.
        if _try_flock(f.fileno()) and os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
            return f
    except OSError:
        pass
    f.close()
    return None


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
    path = dest.with_name(f"{dest.name}.{key}.{secrets.token_hex(4)}.partial")
    f = _create_private(path)
    _try_flock(f.fileno())
    return _Partial(path, f, 0)


def _download(
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

    key = expected[:16] if expected else "unverified"
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


# --- loading ---------------------------------------------------------------------------------------


def _load(path: Path, digest: str, *, where: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    """Load a verified file; legacy-format files go through a verified zip copy so they can be mmapped."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    if is_zip:
        return _state_dict(_torch_load(path, mmap=True, map_location=map_location), path)
    copy = _zip_copy(path, digest, where)
    if copy is None:
        return _state_dict(_torch_load(path, mmap=False, map_location=map_location), path)
    return _state_dict(_torch_load(copy, mmap=True, map_location=map_location), copy)


def _torch_load(path: Path, *, mmap: bool, map_location: MapLocation) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"refused to load {path}: it holds pickled code or objects other than tensors and plain "
            "containers (or is not a PyTorch checkpoint at all), and vggnet only loads with "
            f"weights_only=True, so none of it ran. torch says: {err}"
        ) from err
    except RuntimeError as err:
        raise RuntimeError(f"{path} could not be read as a PyTorch checkpoint: {err}") from err


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: the object itself, or what it holds under "state_dict" or "model"."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_state_dict(inner):
                return inner if isinstance(inner, dict) else dict(inner)
        if _is_state_dict(obj):
            return obj if isinstance(obj, dict) else dict(obj)
    raise TypeError(
        f"{path} does not hold a state dict (a mapping of names to tensors, possibly under 'state_dict' "
        f"or 'model'); found a {type(obj).__name__}"
    )


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _zip_copy(path: Path, digest: str, where: Path) -> Path | None:
    """A verified zip-format copy of the legacy-format file `path`, written once into `where`.

    torch.load cannot memory-map the legacy format, so every load would read and copy the whole
    file; the copy costs one conversion and the disk space of a second file. Returns None (and
    the caller reads the legacy file directly) when the copy cannot be written.
    """
    copy = where / f"{path.name}.zip"
    if _zip_copy_ok(copy, digest):
        return copy
    try:
        with _lock(copy):
            if _zip_copy_ok(copy, digest):
                return copy
            return _convert(path, copy, digest)
    except OSError as err:
        logger.warning("could not write a zip copy of %s (%s); loading the legacy file without mmap", path, err)
        return None


def _zip_copy_ok(copy: Path, source_digest: str) -> bool:
    stamp = _read_stamp(_stamp_of(copy))
    if stamp is None or stamp.get("source_sha256") != source_digest or not copy.is_file():
        return False
    if _stamp_matches(stamp, copy):
        return True
    if _hash_file(copy) != stamp["sha256"]:
        logger.warning("%s changed on disk; converting again", copy)
        return False
    _write_stamp(copy, str(stamp["sha256"]), checked=True, source_sha256=source_digest)
    return True


def _convert(path: Path, copy: Path, digest: str) -> Path:
    started = time.perf_counter()
    state = _torch_load(path, mmap=False, map_location="cpu")
    _state_dict(state, path)  # refuse anything that is not a state dict before writing a copy of it
    tmp = _temp_name(copy)
    try:
        with _create_private(tmp) as f:
            torch.save(state, f)
        del state
        _publish(tmp, copy)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(copy, _hash_file(copy), checked=True, source_sha256=digest)  # the digest of what we wrote
    logger.info("wrote a memory-mappable zip copy of %s in %.1f s", path.name, time.perf_counter() - started)
    return copy
