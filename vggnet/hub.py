"""Fetch and load checkpoints: plain values in (a URL, its SHA-256, its size), verified files out.

The flow: a URL -> `fetch` (a cache hit vouched for by a stamp, or a download hashed while it
streams) -> a verified file -> `torch.load(weights_only=True)`, memory-mapped -> a state dict.
The layers below: `cache.py` (the folder, stamps), `files.py` (opening, hashing), `locks.py` (partial files,
locks) and `download.py` (one transfer).

A local source (a plain path, `file://`) is verified in place, never copied; its stamp lives in the
cache directory under `.stamps/`. A `VGGNET_MIRROR` directory is the same, after the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

import torch

from .cache import (
    _LOCAL_HINT,
    _NAME_DIGEST,
    ENV_HOME,
    ENV_MIRROR,
    ENV_OFFLINE,
    ChecksumError,
    _adopt,
    _cached_digest,
    _check_dir,
    _digest,
    _digest_of,
    _matches,
    _offline,
    _read_stamp,
    _safe_name,
    _same_dir,
    _stamp_matches,
    _stamp_of,
    _stamped_digest,
    _torch_hub_checkpoints,
    _write_stamp,
    cache_dir,
    file_name_from_url,
    normalize_digest,
    verify_file,
)
from .config import OFFICIAL_BASE
from .download import RETRIES, TIMEOUT, DownloadError, Timeout, check_limits, download_file
from .files import create_private, hash_file, open_read, publish, temp_name
from .formats import load_safetensors, sniff_format
from .locks import lock

__all__ = [
    "BadCheckpointError",
    "ChecksumError",
    "DownloadError",
    "UnsafeCheckpointError",
    "add_to_mirror",
    "cache_dir",
    "fetch",
    "file_name_from_url",
    "load_state_dict_from_url",
    "load_weights",
    "verify_file",
    "weights_only_load",
]

logger = logging.getLogger(__name__)

MapLocation = str | torch.device | None


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
) -> dict[str, torch.Tensor]:
    """The state dict of a published checkpoint: found in the cache or downloaded, verified, loaded weights-only.

    `sha256` is the full digest or a hex prefix (at least 8 digits); `size` is the exact byte count and
    `max_size` an upper bound, when known. Files under the official base URL are fetched from
    `VGGNET_MIRROR` when it is set. With `VGGNET_HOME` set, a file of the same name in torch.hub's
    cache is reused (hard-linked or copied in) once its digest matches. `Weights.get_state_dict` calls this.
    """
    name = file_name_from_url(url)
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


def add_to_mirror(
    url: str, folder: str | os.PathLike[str], *, sha256: str, size: int | None = None, progress: bool = True
) -> Path:
    """The file at `url`, verified, under its own name in `folder`, a directory `VGGNET_MIRROR` can point at.

    A copy in the cache that matches `sha256` is hard-linked (or copied); otherwise (none, or one
    that no longer matches and is moved aside) the file is downloaded straight into `folder`.
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
        digest = _cached_digest(cached, expected, url)
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
    name = _safe_name(file_name, source="file_name") if file_name is not None else file_name_from_url(url)
    check_limits(size, timeout, retries)
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


# --- sources and mirrors ---------------------------------------------------------------------------


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
    with lock(dest, create=False):
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
        return dest, download_file(
            url, dest, expected=expected, size=size, max_size=max_size, progress=progress,
            timeout=timeout, retries=retries, hint=download_hint, origin=origin,
        )  # fmt: skip


def _warn_unverified(expected: str | None, path: Path) -> None:
    if expected is None:
        logger.warning("%s: using the cached file unverified (no digest to check it against)", path)


def _verify_local(path: Path, expected: str | None, url: str, *, size: int | None, stamps: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} (from {url!r}) is not a file")
    digest = _digest(path, _local_stamp(path, stamps), expected, follow=True)
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


def _local_stamp(path: Path, stamps: Path) -> Path:
    """Where the stamp of a local file (the caller's, a mirror directory's) lives: `.stamps/` of the cache."""
    return stamps / f"{hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:32]}.json"


# --- loading ---------------------------------------------------------------------------------------


def _load(path: Path, digest: str, *, where: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    """Load the file `fetch` verified; legacy-format files go through a verified zip copy so they can be mmapped.

    The file is opened once: that open file is checked against `digest` (through a stamp that
    describes this very file, else hashed) and that same file is loaded, so a rename between the
    check and the load cannot change what is loaded.
    """
    local = path.parent != where  # the caller's own file or a mirror directory's, not one in the cache
    stamp = _local_stamp(path, where / ".stamps") if local else _stamp_of(path)
    with open_read(path, follow=local) as f:
        actual = _digest_of(f, path, stamp, None)  # None: a stamp is not marked checked for an unpinned file
        if actual != digest:
            raise ChecksumError(
                str(path), path, digest, actual, detail="it changed after it was verified, and was not loaded",
                hint="Something else is writing to this file: load again, and find what replaces it.",
            )  # fmt: skip
        named = _fd_path(f) or path  # the very file just verified (Linux), else its name
        fmt = sniff_format(named)
        if fmt == "safetensors":  # memory-mapped by safetensors, without pickle
            return load_safetensors(named, "cpu" if map_location is None else map_location)
        if fmt == "zip":
            return _state_dict(weights_only_load(f, path, mmap=True, map_location=map_location), path)
        copy = _zip_copy(f, path, digest, where)
        if copy is None:
            return _state_dict(weights_only_load(f, path, mmap=False, map_location=map_location), path)
    copy_path = where / f"{path.name}.zip"
    with copy:
        return _state_dict(weights_only_load(copy, copy_path, mmap=True, map_location=map_location), copy_path)


class BadCheckpointError(ValueError):
    """A checkpoint whose contents vggnet will not load (not a state dict, NaN, sparse or integer weights, ...)."""


class UnsafeCheckpointError(BadCheckpointError, pickle.UnpicklingError):
    """A checkpoint holding pickled code or objects other than tensors and plain containers; none of it ran."""

    def __init__(self, path: str | os.PathLike[str], reference: str | None = None) -> None:
        self.path = Path(path)
        self.reference = reference  # the global it tried to import ("posix.system"), when torch named one
        holds = f"a reference to {reference}" if reference else "pickled code or objects other than tensors"
        super().__init__(
            f"refused to load {path}: it holds {holds} (or is not a PyTorch checkpoint at all); it was read with "
            "weights_only=True, so none of it ran. Use a checkpoint that holds only tensors (a state dict)"
        )


class NotAStateDict(BadCheckpointError, TypeError):
    """A checkpoint that holds no state dict where vggnet looks (a TypeError, as before, and a BadCheckpointError)."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _fd_path(f: IO[bytes]) -> Path | None:
    """A name for the very file `f` holds open (/proc/self/fd/N), where the system has one."""
    path = Path(f"/proc/self/fd/{f.fileno()}")
    return path if path.exists() else None


def weights_only_load(f: IO[bytes], path: Path, *, mmap: bool, map_location: MapLocation) -> Any:
    """torch.load of the open file `f` (named `path`), weights only; memory-mapped through /proc/self/fd if asked.

    torch.load memory-maps only a named file: /proc/self/fd/N names the very file `f` holds open,
    whatever has been renamed since. Elsewhere the file is read through `f`, without mmap. A pickle
    asking for code gives one line naming the file, not torch's advice.
    """
    f.seek(0)
    fd_path = _fd_path(f) if mmap else None
    try:
        if fd_path is not None:
            return torch.load(fd_path, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        # `from None`: torch's text suggests weights_only=False, the one thing never to do with this file
        raise UnsafeCheckpointError(path, found.group(1) if found else None) from None
    except (RuntimeError, KeyError, EOFError) as err:  # a cut zip; a text file is a KeyError, an empty one EOFError
        detail = str(err).splitlines()[0] if isinstance(err, RuntimeError) and str(err) else type(err).__name__
        raise RuntimeError(f"{path} could not be read as a PyTorch checkpoint (corrupt, cut short?): {detail}") from err


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: the object itself, or what it holds under "state_dict" or "model"."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_state_dict(inner):
                return inner if isinstance(inner, dict) else dict(inner)
        if _is_state_dict(obj):
            return obj if isinstance(obj, dict) else dict(obj)
        nested = _nested_state_dict(obj)
        if nested:
            where = "".join(f"[{_key(k)}]" for k in nested)
            raise NotAStateDict(
                f"{path} does not hold a state dict where vggnet looks (the top level, or under 'state_dict' or "
                f"'model'): the tensors are at checkpoint{where}; save that part as a plain "
                f"state dict (torch.save(checkpoint{where}, 'plain.pth')) and load the new file"
            )
        odd = [f"{_key(k)} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        odd += [f"{_key(k)} (a {type(k).__name__} key)" for k in obj if not isinstance(k, str)]
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        raise NotAStateDict(
            f"{path} does not hold a state dict (a mapping of names to tensors, possibly under 'state_dict' or "
            f"'model'): its entries {', '.join(odd[:5])}{more} are not tensors under string names"
        )
    raise NotAStateDict(
        f"{path} does not hold a state dict (a mapping of names to tensors, possibly under 'state_dict' "
        f"or 'model'); found a {type(obj).__name__}"
    )


def _nested_state_dict(obj: Mapping[Any, Any], depth: int = 3) -> list[Any]:
    """The keys leading to the first non-empty state dict below `obj` (at most `depth` levels), else []."""
    if depth == 0:
        return []
    for key, value in obj.items():
        if isinstance(value, Mapping) and value:
            if _is_state_dict(value):
                return [key]
            below = _nested_state_dict(value, depth - 1)
            if below:
                return [key, *below]
    return []


def _key(key: object, width: int = 60) -> str:
    """A checkpoint's key for a message, cut short: the file chose it, and it may be a megabyte long."""
    text = repr(key)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _zip_copy(source: IO[bytes], path: Path, digest: str, where: Path) -> IO[bytes] | None:
    """A verified zip-format copy of the legacy-format file `source` (open as `path`), opened; written once.

    torch.load cannot memory-map the legacy format, so every load would read and copy the whole
    file; the copy costs one conversion and the disk space of a second file. Returns None (and
    the caller reads the legacy file directly) when the copy cannot be written.
    """
    copy = where / f"{path.name}.zip"
    opened = _open_zip_copy(copy, digest)
    if opened is not None:
        return opened
    try:
        with lock(copy):
            opened = _open_zip_copy(copy, digest)
            if opened is None:
                _convert(source, path, copy, digest)
                opened = _open_zip_copy(copy, digest)
            return opened
    except OSError as err:
        logger.warning("could not write a zip copy of %s (%s); loading the legacy file without mmap", path, err)
        return None


def _open_zip_copy(copy: Path, source_digest: str) -> IO[bytes] | None:
    """The zip copy of the file whose digest is `source_digest`, opened, if its stamp vouches for the open file."""
    stamp = _read_stamp(_stamp_of(copy))
    if stamp is None or stamp.get("source_sha256") != source_digest:
        return None
    try:
        f = open_read(copy)
    except OSError as err:  # gone, or not a regular file (logged): made again
        logger.debug("cannot open %s: %s", copy, err)
        return None
    st = os.fstat(f.fileno())
    if _stamp_matches(stamp, st):
        return f
    if hash_file(f) != stamp["sha256"]:
        logger.warning("%s changed on disk; converting again", copy)
        f.close()
        return None
    _write_stamp(copy, str(stamp["sha256"]), checked=True, source_sha256=source_digest, st=st)
    return f


def _convert(source: IO[bytes], path: Path, copy: Path, digest: str) -> None:
    started = time.perf_counter()
    state = weights_only_load(source, path, mmap=False, map_location="cpu")
    _state_dict(state, path)  # refuse anything that is not a state dict before writing a copy of it
    tmp = temp_name(copy)
    try:
        with create_private(tmp) as f:
            torch.save(state, f)
            del state
            f.flush()
            written = hash_file(f)  # the digest of what we wrote
            publish(f, tmp, copy)
            _write_stamp(copy, written, checked=True, source_sha256=digest, st=os.fstat(f.fileno()))
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote a memory-mappable zip copy of %s in %.1f s", path.name, time.perf_counter() - started)
