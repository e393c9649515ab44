"""The cache folder: where checkpoints live, the stamps that vouch for them, hashing, locks, and how files open.

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
whose own files (its `*.partial` temporaries included) are left alone. Every file vggnet opens in
a cache folder is opened here (`_open_fd`): never through a symbolic link, only if it is a regular
file, so a name planted by someone else who can write to the folder is refused, never followed.
Listing and removing what a folder holds is `cache_admin.py`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import torch

# filelock (Windows only) is imported where it is used: importing vggnet touches neither disk nor network.

__all__ = [
    "ChecksumError",
    "NotARegularFileError",
    "cache_dir",
    "file_name_from_url",
    "normalize_digest",
    "verify_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "VGGNET_HOME"
ENV_OFFLINE = "VGGNET_OFFLINE"
ENV_MIRROR = "VGGNET_MIRROR"
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


class NotARegularFileError(OSError):
    """A name in the cache is a symbolic link, FIFO, device or directory: vggnet neither reads nor writes through it.

    Someone who can write to a shared cache could otherwise make vggnet write to, or hang on, any
    file they point at; the fix is to remove the name (`vggnet cache --remove NAME`) and look at who made it.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "not a regular file") -> None:
        self.path = Path(path)
        super().__init__(
            f"refusing {self.path}: it is {what}, and vggnet only opens regular files it can check "
            f"(nothing was read from or written through it); remove it ('vggnet cache --remove {self.path.name}')"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self.path),)


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


def verify_file(path: str | os.PathLike[str], expected: str | None = None, *, progress: Progress | None = None) -> str:
    """`path`'s full SHA-256, hashed afresh: no stamp is trusted or written. `progress` sees each chunk's size.

    Raises `ChecksumError` (with `.actual`) if the digest does not start with `expected`, a digest or its prefix.
    """
    digest = _hash_file(Path(path), progress, follow=True)  # the caller's own path; still only a regular file
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


def _dir_error(folder: Path, problem: str, need: str = "a writable directory") -> OSError:
    home = os.environ.get(ENV_HOME)
    if _same_dir(folder, cache_dir()):
        what = f"the cache directory {ENV_HOME}={home}" if home else f"the cache directory {folder} (torch.hub's)"
        fix = f"point {ENV_HOME} at one, or unset it to use torch.hub's" if home else f"set {ENV_HOME} to one"
    else:
        what, fix = f"the directory {folder}", "choose another (model_dir=, --to)"
    return OSError(f"{what} cannot hold checkpoints: {problem}. It must be {need}; {fix}")


# --- what is cached: checked, moved aside, adopted ------------------------------------------------


def _matches(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected)


def _cached_digest(dest: Path, expected: str | None, url: str) -> str | None:
    """The digest of a cached file that matches `expected`; a mismatching file is moved aside (None)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):  # planted: a link, a FIFO; renaming it follows nothing
        digest, problem = "", f"it is {_kind_of_mode(st.st_mode)}, not a regular file"
    else:
        try:
            digest = _digest(dest, _stamp_of(dest), expected)
        except NotARegularFileError:  # replaced since the lstat
            return _cached_digest(dest, expected, url)
        if _matches(digest, expected):
            return digest
        problem = f"SHA-256 {digest} does not match {expected}"
    # Move aside only the file we checked: another process may have put a good one in place since.
    if os.lstat(dest).st_ino != st.st_ino:
        return _cached_digest(dest, expected, url)
    aside = dest.with_name(f"{dest.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    os.replace(dest, aside)
    _stamp_of(dest).unlink(missing_ok=True)
    logger.warning("%s: %s; moved it aside to %s", dest, problem, aside.name)
    if not digest:
        if _offline():
            raise NotARegularFileError(dest, f"{_kind_of_mode(st.st_mode)} (moved aside to {aside.name})")
        return None
    assert expected is not None  # _matches is True without an expectation
    if _offline():
        raise ChecksumError(
            url, dest, expected, digest,
            detail=f"the cached file was moved aside to {aside} and, with {ENV_OFFLINE} set, not fetched again",
            hint=f"Unset {ENV_OFFLINE} to download a good copy, or put one in {dest.parent}.",
        )  # fmt: skip
    return None


def _adopt(src: Path, dest: Path, expected: str) -> str | None:
    """Hard-link (or copy) a file from torch.hub's cache into ours, if its digest matches."""
    if not _is_regular(src):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)  # offline, nothing else has created it
    tmp = _temp_name(dest)
    try:
        try:
            os.link(src, tmp)  # hash the linked inode, not the name, so what is checked is what is kept
            digest = _hash_file(tmp)
        except NotARegularFileError:
            logger.warning("ignoring %s: it is not a regular file", src)
            return None
        except OSError:
            try:
                digest = _copy_hashing(src, tmp)
            except NotARegularFileError:
                logger.warning("ignoring %s: it is not a regular file", src)
                return None
        if not digest.startswith(expected):
            logger.warning("ignoring %s: its SHA-256 %s does not match %s", src, digest, expected)
            return None
        os.replace(tmp, dest)
        _write_stamp(dest, digest, checked=True)
        logger.info("reused %s from torch.hub's cache (SHA-256 verified)", src)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


# --- opening files: never through a symbolic link, never a FIFO or device ---------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def _kind_of_mode(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def _open_fd(path: Path, flags: int = os.O_RDONLY, *, follow: bool = False, mode: int = 0o600) -> int:
    """`os.open(path, flags)` of a regular file, else `NotARegularFileError`.

    Without `follow`, a symbolic link is refused rather than followed (O_NOFOLLOW); O_NONBLOCK makes
    opening a FIFO return at once instead of waiting for a writer; fstat then refuses anything that
    is not a regular file, so nothing is ever read from, written through or waited on but a file.
    """
    try:
        fd = os.open(path, flags | _NONBLOCK | _BINARY | (0 if follow else _NOFOLLOW), mode)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link (O_NOFOLLOW), a FIFO without reader
            try:
                what = _kind_of_mode(os.lstat(path).st_mode)
            except OSError:
                what = "not a regular file"
            raise NotARegularFileError(path, what) from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(path, _kind_of_mode(st.st_mode))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_read(path: Path, *, follow: bool = False) -> IO[bytes]:
    """`path` opened for reading as `_open_fd` does: a regular file, not followed through a link."""
    return os.fdopen(_open_fd(path, follow=follow), "rb")


def _is_regular(path: Path) -> bool:
    """`path` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# --- stamps and hashing ----------------------------------------------------------------------------


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    # ctime cannot be set by utime, so a byte changed in place is seen even when mtime was restored.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


_STAMP_MAX = 1 << 16  # bytes: a stamp is a line of JSON


def _read_stamp(stamp: Path) -> dict[str, Any] | None:
    try:
        with _open_read(stamp) as f:
            data = json.loads(f.read(_STAMP_MAX).decode("utf-8"))
    except NotARegularFileError as err:
        logger.warning("%s", err)
        return None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None


def _stamp_matches(stamp: dict[str, Any] | None, path: Path | os.stat_result) -> bool:
    """`stamp` still describes `path` (its lstat: a link is never its target), or an fstat result."""
    try:
        st = path if isinstance(path, os.stat_result) else os.lstat(path)
    except OSError:
        return False
    fields = _stat_fields(st)
    return stamp is not None and stat.S_ISREG(st.st_mode) and all(stamp.get(k) == v for k, v in fields.items())


def _write_stamp(
    path: Path, digest: str, stamp: Path | None = None, *, checked: bool, st: os.stat_result | None = None, **extra: str
) -> None:
    """Record `path`'s stat and digest. A cache we cannot write to only costs a re-hash next time.

    `checked` says the digest matched an expected one (a record's, a sha256 argument, a torch.hub
    name's) or is of bytes vggnet wrote itself; only then may `vggnet verify` take it as the reference.
    `st` is the fstat of the file that was hashed (else `path`'s lstat).
    """
    stamp = stamp or _stamp_of(path)
    tmp = _temp_name(stamp)
    try:
        data = {"file": str(path), **_stat_fields(st or os.lstat(path)), "sha256": digest, "checked": checked, **extra}
        stamp.parent.mkdir(parents=True, exist_ok=True)
        with _create_private(tmp) as f:
            f.write(json.dumps(data).encode("utf-8"))
        os.replace(tmp, stamp)
    except OSError as err:
        logger.debug("could not write %s: %s", stamp, err)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _stamped_digest(
    path: Path, stamp_path: Path | None = None, expected: str | None = None, *, st: os.stat_result | None = None
) -> str | None:
    """The digest `path`'s stamp records, while the stamp still describes it (or `st`, an open file's fstat).

    A stamp whose digest matches `expected` is marked checked, if it was not yet.
    """
    stamp_path = stamp_path or _stamp_of(path)
    stamp = _read_stamp(stamp_path)
    if stamp is None or not _stamp_matches(stamp, st or path):
        return None
    digest = str(stamp["sha256"])
    if expected is not None and stamp.get("checked") is not True and digest.startswith(expected):
        _write_stamp(path, digest, stamp_path, checked=True, st=st)
    return digest


def _digest(path: Path, stamp_path: Path, expected: str | None, *, follow: bool = False) -> str:
    """`path`'s full SHA-256: from its stamp while the stamp still describes it, else hashed (and stamped).

    The stamp records whether the digest matched `expected` (see `_write_stamp`). `follow`: the
    caller's own file may be reached through a link; a file in the cache never is.
    """
    with _open_read(path, follow=follow) as f:
        return _digest_of(f, path, stamp_path, expected)


def _digest_of(f: IO[bytes], path: Path, stamp_path: Path, expected: str | None) -> str:
    """`_digest` of the open file `f` (named `path`): its stamp must describe this very file (fstat)."""
    st = os.fstat(f.fileno())
    digest = _stamped_digest(path, stamp_path, expected, st=st)
    if digest is None:
        digest = _hash_file(f)
        _write_stamp(path, digest, stamp_path, checked=expected is not None and digest.startswith(expected), st=st)
    return digest


def _hash_file(source: Path | IO[bytes], progress: Progress | None = None, *, follow: bool = False) -> str:
    """The SHA-256 of a file named by `source` (opened as `_open_read` does), or of an open file from its start."""
    hasher = hashlib.sha256()
    if isinstance(source, Path):
        with _open_read(source, follow=follow) as f:
            _hash_into(f, hasher, progress)
    else:
        source.seek(0)
        _hash_into(source, hasher, progress)
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
    with _open_read(src) as fin, _create_private(dst) as fout:
        while chunk := fin.read(_CHUNK):
            hasher.update(chunk)
            fout.write(chunk)
    return hasher.hexdigest()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_private(path: Path) -> IO[bytes]:
    """A new file only its owner can read (0600), opened for reading and writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600)  # never an existing name
    return os.fdopen(fd, "r+b")


def _publish(f: IO[bytes], tmp: Path, dest: Path) -> None:
    """Make the verified private file `f` (open as `tmp`) readable like any downloaded file; rename it into place.

    The mode is changed through the open file, never through a name someone else may have replaced.
    """
    if os.chmod in os.supports_fd:
        os.chmod(f.fileno(), 0o644)
    else:  # Windows: only the read-only bit exists
        os.chmod(tmp, 0o644)
    os.replace(tmp, dest)  # what lands at `dest` is checked again, from the open file, by every load


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
        return os.lstat(path).st_size
    except OSError:
        return 0


def _claim(path: Path, *, write: bool = True) -> IO[bytes] | None:
    """Open and flock another download's partial file (or a lock), if its holder is gone and it is still there.

    Only a regular file is opened, never through a link; one to be written to (`write`, a partial
    to resume) must also be this user's own, as vggnet created it (0600), so no one else can change
    it, and have no other name, so it is not a hard link to some other file of the user's.
    """
    try:
        fd = _open_fd(path, os.O_RDWR if write else os.O_RDONLY)
    except NotARegularFileError as err:
        logger.warning("%s", err)
        return None
    except OSError:
        return None
    f = os.fdopen(fd, "r+b" if write else "rb")
    try:
        st = os.fstat(fd)
        if write and hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            logger.warning("not resuming %s: it belongs to another user (uid %d)", path, st.st_uid)
        elif write and st.st_nlink != 1:  # a hard link to some other file of this user's: never written to
            logger.warning("not resuming %s: it has %d names (hard links), vggnet made it with one", path, st.st_nlink)
        # Between open and flock the writer may have finished and renamed the file into place.
        elif _try_flock(fd) and os.lstat(path).st_ino == st.st_ino:
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
    where no lock can be taken, or a lock name that is not a regular file) is waited for no longer.
    Correctness comes from the private temporary files and atomic renames.
    """
    if sys.platform == "win32":  # no flock: filelock's msvcrt locking
        with _win_lock(dest, create=create):
            yield
        return
    fd: int | None = None
    try:
        if create:
            dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.parent.is_dir():
            # Read-only and without O_TRUNC: flock needs no more, and a lock someone else created still locks.
            fd = _open_fd(dest.with_name(dest.name + ".lock"), os.O_RDONLY | os.O_CREAT, mode=0o644)
            if not _try_flock(fd) and not _wait_for(fd, dest):
                os.close(fd)
                fd = None
    except OSError as err:
        logger.warning("cannot lock %s (%s); going on without the lock", dest, err)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


@contextlib.contextmanager
def _win_lock(dest: Path, *, create: bool) -> Iterator[None]:
    import filelock

    lock = filelock.FileLock(str(dest) + ".lock")
    try:
        if create:
            dest.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=LOCK_STALL)
    except (OSError, filelock.Timeout) as err:
        logger.warning("cannot lock %s (%s); going on without the lock", dest, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _wait_for(fd: int, dest: Path) -> bool:
    """Wait until the flock on `fd` is ours (True), or its holder made no progress for LOCK_STALL s (False)."""
    logger.info("waiting for another process to finish %s", dest)
    mark, since = _partial_bytes(dest), time.monotonic()
    while True:
        time.sleep(0.1)
        if _try_flock(fd):
            return True
        now = _partial_bytes(dest)
        if now != mark:
            mark, since = now, time.monotonic()
        elif time.monotonic() - since > LOCK_STALL:
            logger.warning("the process holding %s.lock made no progress for %.0f s; going on", dest, LOCK_STALL)
            return False


def _partial_bytes(dest: Path) -> int:
    return sum(_size_or_zero(p) for p in _partials(dest, ""))
