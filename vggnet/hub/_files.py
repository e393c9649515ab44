"""Files as the cache opens them: never through a symbolic link, never a FIFO or device; hashing;
private temporary files and publishing them by atomic rename.

The low layer under `cache.py` and `locks.py`: it knows nothing of cache folders or their names.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from vggnet.errors import NotARegularFileError

__all__ = []

Progress = Callable[[int], object]  # called with the byte count of each chunk hashed

CHUNK = 1 << 20


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def kind_of_mode(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def open_fd(
    path: Path, flags: int = os.O_RDONLY, *, follow: bool = False, mode: int = 0o600, dir_fd: int | None = None
) -> int:
    """`os.open(path, flags)` of a regular file, else `NotARegularFileError`.

    Without `follow`, a symbolic link is refused rather than followed (O_NOFOLLOW); O_NONBLOCK makes
    opening a FIFO return at once instead of waiting for a writer; fstat then refuses anything that
    is not a regular file, so nothing is ever read from, written through or waited on but a file.
    `dir_fd`: `path` is a name in that open directory (see `open_dir`).
    """
    try:
        fd = os.open(path, flags | _NONBLOCK | _BINARY | (0 if follow else _NOFOLLOW), mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link (O_NOFOLLOW), a FIFO without reader
            try:
                what = kind_of_mode(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                what = "not a regular file"
            raise NotARegularFileError(path, what) from err
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(path, kind_of_mode(st.st_mode))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_read(path: Path, *, follow: bool = False) -> IO[bytes]:
    """`path` opened for reading as `open_fd` does: a regular file, not followed through a link."""
    return os.fdopen(open_fd(path, follow=follow), "rb")


def open_dir(folder: Path, *, follow: bool = True) -> int:
    """A descriptor of the directory `folder`, for `open_fd` and `write_private_in`; close it.

    Without `follow`, `folder` itself must not be a symbolic link (`NotARegularFileError`): a folder
    vggnet made is never reached through a link someone else put in its place.
    """
    try:
        return os.open(folder, os.O_RDONLY | _DIRECTORY | (0 if follow else _NOFOLLOW))
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):  # a link (O_NOFOLLOW), or not a directory
            try:
                what = kind_of_mode(os.lstat(folder).st_mode)
            except OSError:
                what = "not a directory"
            raise NotARegularFileError(folder, what) from err
        raise


def write_private_in(dir_fd: int, name: str, data: bytes) -> None:
    """Write `data` as `name` in the open directory `dir_fd`: a private temporary file (0600), renamed over `name`.

    Every name is taken in that directory itself, whatever its path names by then.
    """
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def fd_path(f: IO[bytes]) -> Path | None:
    """A name for the very file `f` holds open (/proc/self/fd/N), where the system has one.

    Libraries that open files by name (torch.load's mmap, safetensors) read through it the file that
    was checked, whatever has been renamed over its name since.
    """
    path = Path(f"/proc/self/fd/{f.fileno()}")
    return path if path.exists() else None


def is_regular(path: Path) -> bool:
    """`path` is a regular file itself (not a link to one)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def hash_file(source: Path | IO[bytes], progress: Progress | None = None, *, follow: bool = False) -> str:
    """The SHA-256 of a file named by `source` (opened as `open_read` does), or of an open file from its start."""
    hasher = hashlib.sha256()
    if isinstance(source, Path):
        with open_read(source, follow=follow) as f:
            hash_into(f, hasher, progress)
    else:
        source.seek(0)
        hash_into(source, hasher, progress)
    return hasher.hexdigest()


def hash_into(f: IO[bytes], hasher: Any, progress: Progress | None = None) -> int:
    buf = bytearray(CHUNK)
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


def copy_hashing(src: Path, dst: Path) -> str:
    hasher = hashlib.sha256()
    with open_read(src) as fin, create_private(dst) as fout:
        while chunk := fin.read(CHUNK):
            hasher.update(chunk)
            fout.write(chunk)
    return hasher.hexdigest()


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def create_private(path: Path) -> IO[bytes]:
    """A new file only its owner can read (0600), opened for reading and writing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600)  # never an existing name
    return os.fdopen(fd, "r+b")


def publish(f: IO[bytes], tmp: Path, dest: Path) -> None:
    """Make the verified private file `f` (open as `tmp`) readable like any downloaded file; rename it into place.

    The mode is changed through the open file, never through a name someone else may have replaced.
    """
    if os.chmod in os.supports_fd:
        os.chmod(f.fileno(), 0o644)
    else:  # Windows: only the read-only bit exists
        os.chmod(tmp, 0o644)
    os.replace(tmp, dest)  # what lands at `dest` is checked again, from the open file, by every load
