"""Partial downloads and locks: how an interrupted download's partial file is named, found and
claimed, and the lock (`NAME.lock`) held while one process downloads or converts NAME.

The names are described in `cache.py`'s docstring; the lock only saves bandwidth, correctness
comes from private temporary files and atomic renames.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vggnet.errors import NotARegularFileError
from vggnet.hub._files import open_fd

# filelock (Windows only) is imported where it is used: importing vggnet touches neither disk nor network.

logger = logging.getLogger(__name__)

LOCK_STALL = 120.0  # give up waiting for another process's download after this long without progress


def partial_key(expected: str | None) -> str:
    """What the partial files of a download of `expected` are keyed by: resumable only with the same digest."""
    return expected[:16] if expected else "unverified"


def new_partial(dest: Path, key: str) -> Path:
    """A fresh name for a partial download of `dest`: NAME.<key>.<8 hex>.partial, beside it."""
    return dest.with_name(f"{dest.name}.{key}.{secrets.token_hex(4)}.partial")


def partials(dest: Path, key: str) -> list[Path]:
    """The partial downloads of `dest` whose key starts with `key` ("" for all of them)."""
    prefix = f"{dest.name}.{key}"
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return []
    return [dest.parent / n for n in names if n.startswith(prefix) and n.endswith(".partial")]


def size_or_zero(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def claim(path: Path, *, write: bool = True) -> IO[bytes] | None:
    """Open and flock another download's partial file (or a lock), if its holder is gone and it is still there.

    Only a regular file is opened, never through a link; one to be written to (`write`, a partial
    to resume) must also be this user's own, as vggnet created it (0600), so no one else can change
    it, and have no other name, so it is not a hard link to some other file of the user's.
    """
    try:
        fd = open_fd(path, os.O_RDWR if write else os.O_RDONLY)
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
        elif try_flock(fd) and os.lstat(path).st_ino == st.st_ino:
            return f
    except OSError:
        pass
    f.close()
    return None


def try_flock(fd: int) -> bool:
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
def lock(dest: Path, *, create: bool = True) -> Iterator[None]:
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
            fd = open_fd(dest.with_name(dest.name + ".lock"), os.O_RDONLY | os.O_CREAT, mode=0o644)
            if not try_flock(fd) and not _wait_for(fd, dest):
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

    file_lock = filelock.FileLock(str(dest) + ".lock")
    try:
        if create:
            dest.parent.mkdir(parents=True, exist_ok=True)
        file_lock.acquire(timeout=LOCK_STALL)
    except (OSError, filelock.Timeout) as err:
        logger.warning("cannot lock %s (%s); going on without the lock", dest, err)
        yield
        return
    try:
        yield
    finally:
        file_lock.release()


def _wait_for(fd: int, dest: Path) -> bool:
    """Wait until the flock on `fd` is ours (True), or its holder made no progress for LOCK_STALL s (False)."""
    logger.info("waiting for another process to finish %s", dest)
    mark, since = _partial_bytes(dest), time.monotonic()
    while True:
        time.sleep(0.1)
        if try_flock(fd):
            return True
        now = _partial_bytes(dest)
        if now != mark:
            mark, since = now, time.monotonic()
        elif time.monotonic() - since > LOCK_STALL:
            logger.warning("the process holding %s.lock made no progress for %.0f s; going on", dest, LOCK_STALL)
            return False


def _partial_bytes(dest: Path) -> int:
    return sum(size_or_zero(p) for p in partials(dest, ""))
