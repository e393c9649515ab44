"""Fetch and load checkpoints: plain values in (a URL, its SHA-256, its size), verified files out.

The flow: a URL -> `fetch` (a cache hit vouched for by a stamp, or a download hashed while it
streams) -> a verified file -> `torch.load(weights_only=True)`, memory-mapped -> a state dict.
The layers below: `cache.py` (the folder, stamps), `files.py` (opening, hashing), `locks.py` (partial files,
locks), `download.py` (one transfer) and `loading.py` (the weights-only load of the verified open file,
whose errors `BadCheckpointError` and `UnsafeCheckpointError` are importable from here too).

A local source (a plain path, `file://`) is verified in place, never copied; its stamp lives in the
cache directory under `.stamps/`. A `VGGNET_MIRROR` directory is the same, after the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import torch

from vggnet import settings
from vggnet.errors import BadCheckpointError, ChecksumError, MissingPathError, NotCachedError, UsageError
from vggnet.hub._cache import (
    LOCAL_HINT,
    LOCAL_STAMPS,
    NAME_DIGEST,
    adopt,
    cache_dir,
    cached_digest,
    check_dir,
    digest_matches,
    file_digest,
    file_name_from_url,
    local_stamp_path,
    normalize_digest,
    safe_name,
    same_dir,
    stamped_digest,
    torch_hub_checkpoints,
)
from vggnet.hub._download import RETRIES, TIMEOUT, Timeout, check_limits, download_file
from vggnet.hub._files import temp_name
from vggnet.hub._loading import MapLocation, VerifiedFile, load_verified, open_checked, open_unchecked
from vggnet.hub._locks import lock
from vggnet.settings import ENV_MIRROR, ENV_OFFLINE

__all__ = [
    "OFFICIAL_BASE",
    "add_to_mirror",
    "fetch",
    "load_state_dict_from_url",
    "load_weights",
    "open_verified",
]

logger = logging.getLogger(__name__)

OFFICIAL_BASE = (
    "https://download.pytorch.org/models/"  # where the official checkpoints live; what VGGNET_MIRROR replaces
)


_NAME_HINT = (
    "The expected digest is the hex part of the file name, torch.hub's name-<sha256 prefix>.pth convention; "
    "if the name only looks like one, pass sha256= (--sha256) with the real digest, or file_name=."
)


# --- public entry points ---------------------------------------------------------------------------


def load_weights(
    url: str,
    *,
    sha256: str,
    size: int | None = None,
    max_size: int | None = None,
    progress: bool = True,
    map_location: MapLocation = None,
    file_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load the state dict of a published checkpoint: found in the cache or downloaded, verified, weights-only.

    Files under the official base URL are fetched from `VGGNET_MIRROR` when it is set. With `VGGNET_HOME`
    set, a file of the same name in torch.hub's cache is reused (hard-linked or copied in) once its digest
    matches. `Weights.get_state_dict` calls this.

    Args:
        url: the checkpoint's URL.
        sha256: the full digest or a hex prefix of at least 8 digits; the file must match it.
        size: the exact byte count, when known: a download of another size is refused.
        max_size: an upper bound on the byte count, when the exact one is not known.
        progress: show a progress bar on stderr while downloading.
        map_location: where the tensors go (as in `torch.load`); None keeps them where they were saved.
        file_name: the name in the cache, where the URL's last segment is not unique.

    Returns:
        The state dict, read from the very open file that was checked against `sha256`.
    """
    name = safe_name(file_name, source="file_name") if file_name is not None else file_name_from_url(url)
    where = cache_dir()
    path, digest = _fetch(
        _mirrored(url, name),
        expected=normalize_digest(sha256),
        size=size,
        max_size=max_size,
        dest=where / name,
        progress=progress,
        timeout=TIMEOUT,
        retries=RETRIES,
        origin=url,
        look_aside=_look_aside(),
    )
    return load_verified(path, digest, where=where, map_location=map_location)


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
    """Give the path of a verified copy of `url`: a cache hit, a fresh download, or a local file checked in place.

    Without `sha256` the prefix in a torch.hub-style name (`name-<hex>.pth`) is checked, and with neither a
    warning says nothing could be verified. A download goes to a private temporary file in the cache,
    hashed while it streams, and is renamed into place only once its digest matches; a partial download is
    resumed. With `VGGNET_OFFLINE` set nothing is downloaded.

    Args:
        url: https, http, `file://` or a local path (verified where it is, not copied).
        sha256: the full digest or a hex prefix of at least 8 digits.
        size: the exact byte count, when known; enforced.
        model_dir: the folder to cache into; default the cache directory (`cache_dir()`).
        file_name: the name to cache under; default the URL's last path segment.
        progress: show a progress bar on stderr while downloading.
        timeout: (connect, read) seconds, or one number for both; the read timeout is the longest silence
            between two reads (`VGGNET_DOWNLOAD_DEADLINE` bounds a whole download, retries included).
        retries: how many times a download is retried after connection errors, 5xx and 429 answers.

    Returns:
        The verified file's path.

    Raises:
        ChecksumError: the file's digest does not match; nothing is kept under its name (a cached copy that
            stopped matching is moved aside as NAME.corrupt-*), a local file is left where it is.
        DownloadError: the server failed or refused after the retries.
        NotCachedError: `VGGNET_OFFLINE` is set and the file is not cached (a FileNotFoundError).
        MissingPathError: a local path or `file://` URL names no file.
        UsageError: a hostile file name, an unsupported URL scheme, or a bad `sha256`.
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
    """Load a state dict from a URL as torch.hub's function of that name does, but verified, weights-only, mmapped.

    The checkpoint must be a state dict (a mapping of names to tensors); a dict that holds one under
    "state_dict" or "model" (a training checkpoint) is unwrapped. A checkpoint carrying pickled code is
    refused before any of it runs.

    Args:
        url: https, http, `file://` or a local path, fetched as `fetch` does.
        sha256: the full digest or a hex prefix of at least 8 digits; without it, the prefix in a
            torch.hub-style name is checked (see `fetch`).
        model_dir: the folder to cache into; default the cache directory.
        map_location: where the tensors go (as in `torch.load`); None keeps them where they were saved.
        progress: show a progress bar on stderr while downloading.
        file_name: the name to cache under; default the URL's last path segment.

    Returns:
        The state dict.
    """
    path, digest = _fetch_url(
        url, sha256=sha256, size=None, model_dir=model_dir, file_name=file_name,
        progress=progress, timeout=TIMEOUT, retries=RETRIES,
    )  # fmt: skip
    where = Path(model_dir) if model_dir is not None else cache_dir()
    return load_verified(path, digest, where=where, map_location=map_location)


@contextlib.contextmanager
def open_verified(
    url: str | os.PathLike[str], *, sha256: str | None = None, progress: bool = True
) -> Iterator[VerifiedFile]:
    """A weights file fetched and verified as `fetch` does, opened once: read it through the `VerifiedFile`.

    The open file is the one checked against the digest (its stamp describes that very file, else it is
    hashed), so a file renamed over the name in between is never read under the good file's digest.
    A local file given without `sha256` is opened once and read as it is (said once, at INFO).

    Args:
        url: https, http, `file://` or a local path (a path object is always one).
        sha256: the full digest or a prefix of at least 8 hex digits (see `fetch`).
        progress: show a progress bar while downloading.

    Yields:
        The open file, its path, its digest (None for an unpinned local file) and format.

    Raises:
        ChecksumError: the file is not the one the digest names, or changed after it was verified.
        MissingPathError: a local file that is not there.
        DownloadError, NotCachedError: as `fetch`.
    """
    local = Path(url) if isinstance(url, os.PathLike) else _local_path(url)
    if local is not None and sha256 is None:
        if not local.is_file():
            raise MissingPathError(f"{local} (from {url!r}) is not a file")
        _say_unverified(local)
        with open_unchecked(local) as verified:
            yield verified
        return
    path, digest = _fetch_url(
        os.fspath(url), sha256=sha256, size=None, model_dir=None, file_name=None, progress=progress,
        timeout=TIMEOUT, retries=RETRIES,
    )  # fmt: skip
    with open_checked(path, digest, where=cache_dir()) as verified:
        yield verified


def add_to_mirror(
    url: str, folder: str | os.PathLike[str], *, sha256: str, size: int | None = None, progress: bool = True
) -> Path:
    """Put the file at `url`, verified, under its own name in `folder`, a directory `VGGNET_MIRROR` can point at.

    A copy in the cache that matches `sha256` is hard-linked (or copied); otherwise (none, or one that no
    longer matches and is moved aside) the file is downloaded straight into `folder`. `vggnet download --to`
    calls this.

    Args:
        url: the checkpoint's URL; its last path segment is the name in `folder`.
        folder: the mirror directory; made if missing.
        sha256: the full digest or a hex prefix of at least 8 digits.
        size: the exact byte count, when known.
        progress: show a progress bar on stderr while downloading.

    Returns:
        The verified file in `folder`.
    """
    folder = Path(folder)
    name = file_name_from_url(url)
    dest = folder / name
    path = _cached_copy(url, name, normalize_digest(sha256))
    if path is None:
        path = fetch(url, sha256=sha256, size=size, model_dir=folder, file_name=name, progress=progress)
    if path.resolve() != dest.resolve():  # the cache's copy, or a VGGNET_MIRROR folder's (checked in place)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(dest)
        try:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        path = fetch(str(dest), sha256=sha256, size=size, model_dir=folder, progress=progress)
    return path


def _cached_copy(url: str, name: str, expected: str) -> Path | None:
    """The cache's copy of `name` if its digest starts with `expected`; one that does not is moved aside."""
    cached = cache_dir() / name
    if not cached.is_file():
        return None
    with lock(cached, create=False):
        digest = cached_digest(cached, expected, url)
    if digest is None:
        logger.warning("the cached %s does not match its digest; fetching %s instead", cached.name, url)
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
    name = safe_name(file_name, source="file_name") if file_name is not None else file_name_from_url(url)
    check_limits(size, timeout, retries)
    from_name = False
    if sha256 is not None:
        expected: str | None = normalize_digest(sha256.strip())
    elif _local_path(url) is not None:
        expected = None  # the name of one's own file is no promise: "-20240101." is a date, not a digest
    else:
        match = NAME_DIGEST.search(name)
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


# --- sources and mirrors ---------------------------------------------------------------------------


def _local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"file:// URLs must name a local file (file:///path), got {url!r}")
        return Path(unquote(parts.path))
    if scheme == "" or (len(scheme) == 1 and sys.platform == "win32"):  # a plain path, or a drive letter
        return Path(url).expanduser()
    raise UsageError(f"unsupported URL scheme {parts.scheme!r} in {url!r}; use https, http, file:// or a local path")


def _mirrored(url: str, name: str) -> str:
    """`url` with the official base replaced by $VGGNET_MIRROR (a base URL or a local directory)."""
    mirror = settings.mirror()
    if not mirror or not url.startswith(OFFICIAL_BASE):
        return url
    scheme = urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/" + quote(name)
    try:
        folder = _local_path(mirror)  # a directory (or drive letter), else the unsupported scheme
    except ValueError as err:
        raise UsageError(
            f"{ENV_MIRROR}={mirror!r} has the unsupported scheme {scheme!r}: set it to a base URL "
            "(https://..., http://..., file:///...) or a local directory, or unset it"
        ) from err
    assert folder is not None  # http(s) was handled above
    return str(folder / name)


def _look_aside() -> Path | None:
    """torch.hub's checkpoint directory when VGGNET_HOME moved the cache elsewhere, else None."""
    if settings.home() is None:
        return None
    torch_dir = torch_hub_checkpoints()
    return None if same_dir(torch_dir, cache_dir()) else torch_dir


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
    stamps = dest.parent / LOCAL_STAMPS
    if local is not None and url == origin:  # the caller's own file: verified where it is
        return local, _verify_local(local, expected, url, size=size, stamps=stamps)
    digest = stamped_digest(dest, expected=expected)  # the fast path: no hashing, no lock
    if digest is not None and digest_matches(digest, expected):
        _warn_unverified(expected, dest)
        return dest, digest
    offline = settings.offline()
    check_dir(dest.parent, create=local is None and not offline)
    with lock(dest, create=False):
        digest = cached_digest(dest, expected, url)
        if digest is not None:
            _warn_unverified(expected, dest)
            return dest, digest
        if look_aside is not None and expected is not None:
            digest = adopt(look_aside / dest.name, dest, expected)
            if digest is not None:
                return dest, digest
        if local is not None:  # a VGGNET_MIRROR directory: checked where it is, not copied
            if not local.is_file():
                raise NotCachedError(
                    f"{dest.name} is neither in the cache ({dest.parent}) nor in the mirror "
                    f"{ENV_MIRROR}={settings.mirror()} (no file {local}): put it there "
                    f"('vggnet download --to DIR' builds a mirror), or unset {ENV_MIRROR} to download {origin}"
                )
            return local, _verify_local(local, expected, url, size=size, stamps=stamps)
        if offline:
            raise NotCachedError(
                f"{dest.name} is not in the cache and {ENV_OFFLINE} is set, so it was not downloaded: "
                f"download {origin} and put it in {dest.parent} (or point {ENV_MIRROR} at a directory holding it)"
            )
        return dest, download_file(
            url, dest, expected=expected, size=size, max_size=max_size, progress=progress,
            timeout=timeout, retries=retries, hint=download_hint, origin=origin,
        )  # fmt: skip


def _warn_unverified(expected: str | None, path: Path) -> None:
    if expected is None:
        logger.warning("%s: using the cached file unverified (no digest to check it against)", path)


def _verify_local(path: Path, expected: str | None, url: str, *, size: int | None, stamps: Path) -> str:
    if not path.is_file():
        raise MissingPathError(f"{path} (from {url!r}) is not a file")
    digest = file_digest(path, local_stamp_path(path, stamps), expected, follow=True)
    left = "the file was left where it is and not loaded"
    if not digest_matches(digest, expected):
        assert expected is not None
        raise ChecksumError(url, path, expected, digest, detail=left, hint=LOCAL_HINT)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise BadCheckpointError(f"{path} has {actual:,} bytes, not the {size:,} that size= says; {left}")
    if expected is None:
        _say_unverified(path)
    return digest


# The local files already said to be unverified, by resolved path: a loop that reloads its own checkpoint
# each epoch hears it once (issue 25).
_UNVERIFIED: set[str] = set()
_UNVERIFIED_LOCK = threading.Lock()


def _say_unverified(path: Path) -> None:
    """Log at INFO, once per file per process, that a local file is used with no digest to check it against."""
    key = os.path.realpath(path)
    with _UNVERIFIED_LOCK:
        if key in _UNVERIFIED:
            return
        _UNVERIFIED.add(key)
    logger.info("%s: loading a local file unverified (no digest to check it against; pass sha256= to check it)", path)
