"""The cache folder: where checkpoints live, the stamps that vouch for them, hashing, locks, listing, removal.

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
- `.stamps/`: the stamps of local files (plain paths, `file://`, a `VGGNET_MIRROR` directory),
  which are verified in place and never copied.

Only these exact names are vggnet's: the default cache is torch.hub's, shared with torchvision,
whose own files (its `*.partial` temporaries included) are left alone. Every file this module
opens in a cache folder is opened here, so how it is opened is decided in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import torch

if TYPE_CHECKING:
    import filelock

# filelock is imported where it is used: importing vggnet touches neither disk nor network.

__all__ = [
    "CachedFile",
    "ChecksumError",
    "Removed",
    "cache_dir",
    "cached_files",
    "file_name_from_url",
    "normalize_digest",
    "remove_cached",
    "verify_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "VGGNET_HOME"
ENV_OFFLINE = "VGGNET_OFFLINE"
LOCK_STALL = 120.0  # give up waiting for another process's download after this long without progress

Progress = Callable[[int], object]  # called with the byte count of each chunk hashed

_CHUNK = 1 << 20
_NAME_DIGEST = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's "name-<hex>.pth" convention
_DIGEST = re.compile(r"[0-9a-f]{8,64}")


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


def normalize_digest(sha256: str) -> str:
    """A SHA-256 digest or hex prefix in lower case; ValueError unless it has 8 to 64 hex digits."""
    digest = sha256.lower()
    if not _DIGEST.fullmatch(digest):
        raise ValueError(
            f"sha256 must be the 64 hex digits of the file's SHA-256, or at least its first 8, got {sha256!r}"
        )
    return digest


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


# --- listing and removal ---------------------------------------------------------------------------


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
_PARTIAL = re.compile(r"(.+)\.(?:[0-9a-f]{8,16}|unverified)\.[0-9a-f]{8}\.partial")  # see _new_partial
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


# --- names and folders -----------------------------------------------------------------------------


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


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


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


# --- what is cached: checked, moved aside, adopted ------------------------------------------------


def _matches(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected)


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


# --- partial downloads and locks -------------------------------------------------------------------


def _partial_key(expected: str | None) -> str:
    """What the partial files of a download of `expected` are keyed by: resumable only with the same digest."""
    return expected[:16] if expected else "unverified"


def _new_partial(dest: Path, key: str) -> Path:
    """A fresh name for a partial download of `dest`: NAME.<key>.<8 hex>.partial, beside it."""
    return dest.with_name(f"{dest.name}.{key}.{secrets.token_hex(4)}.partial")


def _partials(dest: Path, key: str) -> list[Path]:
    """The partial downloads of `dest` whose key starts with `key` ("" for all of them)."""
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
