"""Files the commands write, written as checkpoints are: whole or not at all, never through a link, one writer each.

- `check_output(path)`: a destination vggnet may write is nothing yet, or a regular file it replaces
  whole; a folder, a symbolic link, a FIFO or a device is refused (`OutputPathError`, exit 2) before
  any work is done, so a command can check its outputs before it fetches weights.
- `atomic_write(path)`: a private temporary file in the destination's folder (`.NAME.<8 hex>.tmp`),
  flushed, fsynced and renamed over NAME only when the block ends without an error, then the folder
  fsynced; removed in `finally` otherwise. A rename replaces a link planted meanwhile, never what it
  points to. What cannot be written (no space, no permission, a read-only disk) is a `DiskError`.
- `open_append(path)`: a file written as it comes (predict's lines), opened without following a link.
- `open_own(path)`: a file vggnet wrote, opened to be read back (resumed): a regular file, never a link
  followed, nor a FIFO waited on.
- `writer_lock(lock, what)`: an exclusive flock on the file `lock`, held while one process writes `what`;
  a second writer is refused at once (`InUseError`) with the holder's pid and host, which the lock
  file holds. A holder that dies releases it with its file descriptors.
- `remove_leftovers(folder, names)`: the temporary files a killed writer left beside `names`.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from vggnet.errors import DiskError, InUseError, OutputPathError

__all__ = [
    "atomic_write",
    "check_output",
    "lock_beside",
    "open_append",
    "open_own",
    "remove_leftovers",
    "save_png",
    "write_text",
    "writer_lock",
]

logger = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_TEMP = ".tmp"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    )  # fmt: skip
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def check_output(path: str | os.PathLike[str]) -> Path:
    """`path`, if vggnet may write it: nothing is there yet, or a regular file to replace whole.

    Args:
        path: the file a command is about to write.

    Returns:
        `path` as a Path.

    Raises:
        OutputPathError: `path` is a folder, a symbolic link (even to a file), a FIFO, a device or a
            socket, or a folder on its way is a file (exit 2: name another file).
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise _not_in_a_folder(path) from None
    if stat.S_ISREG(mode):
        return path
    what = _kind(mode)
    if stat.S_ISDIR(mode):
        fix = f"name the file to write in it (e.g. {path / 'NAME'})"
    else:
        fix = "vggnet never writes through one: remove it, or name another file"
    raise OutputPathError(f"cannot write {path}: it is {what}; {fix}")


def _disk_error(path: Path, err: OSError) -> DiskError:
    reason = err.strerror or type(err).__name__
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    fix = "free some space or write elsewhere" if full else "write to a folder you may write to"
    return DiskError(f"cannot write {path}: {reason}; nothing was written there: {fix}")


def _not_in_a_folder(path: Path) -> OutputPathError:
    return OutputPathError(f"cannot write {path}: {path.parent} (or a folder above it) is a file, not a folder")


def _folder_of(path: Path) -> Path:
    """The folder `path` goes in, made if missing; a file on its way is a usage error, a denial a disk error."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _not_in_a_folder(path) from None
    except OSError as err:
        raise _disk_error(path, err) from err
    return folder


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without an error, and nothing otherwise.

    An existing file of ours keeps its permission bits; a new one (or one replacing a link or another user's
    file) gets 0666 less the umask, as `open` gives.

    Args:
        path: the destination; checked by `check_output`, its folder made if missing.

    Yields:
        The temporary file, open for writing (and reading back).

    Raises:
        OutputPathError: `path` is not something vggnet writes (see `check_output`).
        DiskError: the file could not be written whole (no space, no permission, read-only); nothing was kept.
    """
    path = check_output(path)
    folder = _folder_of(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP}")
    try:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY, 0o666)
        except OSError as err:
            raise _disk_error(path, err) from err
        with os.fdopen(fd, "w+b") as f:
            try:
                _keep_mode(fd, path)
                yield f
                f.flush()
                os.fsync(fd)
            except OSError as err:
                if isinstance(err, (DiskError, OutputPathError)):
                    raise
                raise _disk_error(path, err) from err
        _rename(tmp, path)
        _fsync_folder(folder)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_mode(fd: int, path: Path) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    # only our own regular file's bits: a link planted since says 0777, another user's file what they chose
    ours = stat.S_ISREG(st.st_mode) and st.st_uid == getattr(os, "geteuid", lambda: st.st_uid)()
    if ours and os.chmod in os.supports_fd:
        os.chmod(fd, stat.S_IMODE(st.st_mode))


def _rename(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)  # never follows a link at `path`: the link itself is replaced
    except IsADirectoryError:
        raise OutputPathError(f"cannot write {path}: it is a folder; name the file to write in it") from None
    except OSError as err:
        raise _disk_error(path, err) from err


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some systems (Windows) cannot open a folder, which is no error."""
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`text` as UTF-8 into `path`, through `atomic_write`.

    Args:
        path: the destination.
        text: what it is to hold.

    Returns:
        `path` as a Path.
    """
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


def save_png(image: Any, path: str | os.PathLike[str]) -> Path:
    """A Pillow image written as a PNG to `path` through `atomic_write`, whatever its suffix.

    Args:
        image: a `PIL.Image.Image`.
        path: the destination.

    Returns:
        `path` as a Path.
    """
    with atomic_write(path) as f:
        image.save(f, format="PNG")
    return Path(path)


def open_append(path: Path, *, errors: str = "surrogateescape") -> IO[str]:
    """`path` opened to append UTF-8 text, created if missing, never through a link, line-buffered.

    Args:
        path: the file written as it comes (a line per image).
        errors: how text that is not UTF-8 is written; `surrogateescape` writes a file name's
            undecodable bytes back as they were, so any path round-trips.

    Returns:
        The open text file.

    Raises:
        OutputPathError: `path` is a link, a folder or another thing that is not a file, or a file with
            other names (hard links), which appending would change too.
        DiskError: it cannot be opened for writing.
    """
    check_output(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _BINARY, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            check_output(path)  # planted since: say what it is
        raise _disk_error(path, err) from err
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        check_output(path)
        raise OutputPathError(
            f"cannot append to {path}: it has {st.st_nlink} names (hard links), so it is also another file; "
            "vggnet appends only to a file of one name: copy it, or write elsewhere"
        )
    return open(fd, "a", encoding="utf-8", errors=errors, newline="", buffering=1)


def open_own(path: Path) -> IO[bytes]:
    """A file vggnet wrote, opened to be read back: a regular file, never through a link, never waiting on a FIFO.

    What a resumed run reads (its parts, its settings) could otherwise be a link someone planted to
    another file, whose lines would be copied into the output, or a FIFO that hangs the run.

    Args:
        path: the file to read.

    Returns:
        The open binary file.

    Raises:
        OutputPathError: `path` is a link, a FIFO, a folder or anything but a regular file (remove it).
        OSError: it cannot be opened (FileNotFoundError, PermissionError, ...).
    """
    nonblock = getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once, to be refused, instead of waiting for a writer
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | _NOFOLLOW | _CLOEXEC | _BINARY)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        what = _kind(os.lstat(path).st_mode)
        raise OutputPathError(f"cannot read {path} back: it is {what}, not a file vggnet wrote; remove it")
    if nonblock:
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


# --- one writer at a time --------------------------------------------------------------------------


def lock_beside(path: Path) -> Path:
    """The lock file of the output `path`: `.NAME.lock` in its folder.

    Args:
        path: an output file.

    Returns:
        The lock file's path (for `writer_lock`).
    """
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def writer_lock(lock: Path, what: Path) -> Iterator[None]:
    """Hold the flock on `lock` while writing `what`; InUseError naming the holder if another process has it.

    The lock file holds "pid N on HOST since TIME" and is removed on release. A lock file that was
    removed between opening and locking it is opened again, so two processes never both hold one.
    Where there is no flock (Windows), a warning is logged and the writer goes on without the lock.

    Args:
        lock: the lock file (made, with its folder, if missing).
        what: the output or folder the lock stands for, named in the message.

    Yields:
        None, while the lock is held.

    Raises:
        InUseError: another process holds the lock (exit 1: wait for it, stop it or write elsewhere).
        OutputPathError: `lock` is a link or anything but a regular file.
    """
    if sys.platform == "win32":
        logger.warning("no flock on this system: %s is written without a lock", what)
        yield
        return
    fd = _take(lock, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.lstat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()
        os.close(fd)  # releases the flock


def _take(lock: Path, what: Path) -> int:
    import fcntl

    _folder_of(lock)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        except OSError as err:
            check_output(lock)
            raise _disk_error(lock, err) from err
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                check_output(lock)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", "replace").strip() or "a process that is starting"
            os.close(fd)
            raise InUseError(
                f"{what} is being written by another vggnet process ({holder}; lock {lock.name}); wait for it to "
                "finish or stop it, or write elsewhere"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.lstat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: take the new one


def remove_leftovers(folder: Path, names: Sequence[str]) -> list[str]:
    """Remove the temporary files `atomic_write` left for `names` in `folder` (a writer killed mid-save).

    Call it only while holding the folder's lock: then no other writer's file is in flight.

    Args:
        folder: the folder written to.
        names: the files `atomic_write` writes there ("last.pth", ...).

    Returns:
        The names removed.
    """
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    prefixes = tuple(f".{name}." for name in names)
    removed = []
    for entry in entries:
        if entry.startswith(prefixes) and entry.endswith(_TEMP):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / entry)  # the name itself, never what a link points to
                removed.append(entry)
    if removed:
        logger.info("removed %d temporary file(s) a killed run left in %s: %s", len(removed), folder, removed)
    return sorted(removed)
