"""What a cache (or mirror) folder holds, listed by kind with stamps and locks, and how it is removed.

The names are those `cache.py` writes (see its docstring); this module only reads the folder and
deletes from it, and never opens what is not a regular file (a planted link or FIFO is listed as
"not a regular file" and removed by its name alone).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggnet.hub._cache import NAME_DIGEST, cache_dir, dir_error, read_stamp, stamp_of
from vggnet.hub._files import is_regular
from vggnet.hub._locks import claim

__all__ = ["CachedFile", "Removed", "cached_files", "remove_cached"]


@dataclass(frozen=True)
class CachedFile:
    """A file in a cache or mirror folder, with the stamp and lock that serve it, as `cached_files` lists it.

    Attributes:
        path: the file.
        kind: "checkpoint" (any file but vggnet's bookkeeping), "zip copy" (the zip-format copy vggnet made of a
            legacy file), "partial" (an unfinished download), "corrupt" (a copy moved aside when its digest did
            not match), "lock" (one whose checkpoint is not there and no partial download explains: left by a
            failed download), or "not a regular file" (a link, FIFO or device: never opened).
        base: the name of the checkpoint it belongs to (its own name for a checkpoint).
        size: its size in bytes.
        related: its NAME.stamp and NAME.lock, where present: removed with it.
        sha256: the digest its stamp recorded when it was last hashed; None without a stamp.
        checked: that digest matched an expected one (or is of a zip copy vggnet wrote), so `vggnet verify` can
            compare against it.
    """

    path: Path
    # "checkpoint" (any file but vggnet's bookkeeping), "zip copy", "partial", "corrupt", "lock" (one whose
    # checkpoint is not there and that no partial download explains: left by a failed download), or
    # "not a regular file" (a link, FIFO or device: never opened; base is the checkpoint its name belongs to)
    kind: str
    base: str  # the name of the checkpoint it belongs to (its own name for a checkpoint)
    size: int  # bytes
    related: tuple[Path, ...]  # its NAME.stamp and NAME.lock, where present: removed with it
    sha256: str | None  # the digest its stamp recorded when it was last hashed
    checked: bool = False  # that digest matched an expected one (or is of a zip copy vggnet wrote)

    @property
    def name_digest(self) -> str | None:
        """The SHA-256 prefix in a checkpoint's torch.hub-style name (`name-<hex>.pth`), which `fetch` checks."""
        match = NAME_DIGEST.search(self.path.name) if self.kind == "checkpoint" else None
        return match.group(1) if match else None

    @property
    def ours(self) -> bool:
        """vggnet wrote or verified it: a file with a stamp, a zip copy, a partial download, a corrupt copy.

        A file without a stamp may be torchvision's or anyone's (the default cache is torch.hub's), and
        so may a link: one is vggnet's only under a name vggnet uses (a partial, a corrupt copy).
        """
        if self.kind == "not a regular file":
            return self.base != self.path.name
        return self.kind != "checkpoint" or self.sha256 is not None


@dataclass(frozen=True)
class Removed:
    """What `remove_cached` deleted, and what it left because another live process holds it.

    Attributes:
        files: the entries deleted, each with its stamp and lock.
        skipped: what was left in place: the partial file of a running download, a lock a process holds.
    """

    files: tuple[CachedFile, ...]
    skipped: tuple[Path, ...]  # the partial file of a running download, a lock a process holds

    @property
    def freed(self) -> int:
        """The bytes the deleted files took (their sizes summed)."""
        return sum(entry.size for entry in self.files)


# vggnet's own names (the module docstring); anything else in a folder is a plain file, whatever its name.
_PARTIAL = re.compile(r"(.+)\.(?:[0-9a-f]{8,16}|unverified)\.[0-9a-f]{8}\.partial")  # see new_partial
_CORRUPT = re.compile(r"(.+)\.corrupt-\d{8}-\d{6}-[0-9a-f]{4}")  # see cached_digest


def cached_files(folder: str | os.PathLike[str] | None = None) -> list[CachedFile]:
    """List the files of a cache or mirror folder in name order, each with its stamp and lock.

    Only vggnet's own names are taken for bookkeeping: `NAME.<digest>.<id>.partial`,
    `NAME.corrupt-<time>-<id>`, and `NAME.zip` with the stamp vggnet wrote for it. Any other file
    (torch.hub's own `*.partial` included) is a "checkpoint" of its own name. Hidden files (temporaries,
    the local files' `.stamps/`) and directories are left out; a name that is a link, FIFO or device is
    listed as "not a regular file" and never opened.

    Args:
        folder: the folder to list; None for the cache directory (`cache_dir()`).

    Returns:
        One `CachedFile` per file; empty when the folder does not exist.

    Raises:
        OSError: a file stands where the folder should be; the message names it (and VGGNET_HOME when that is
            what points there).
    """
    where = cache_dir() if folder is None else Path(folder)
    try:
        with os.scandir(where) as it:
            entries = sorted(it, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError as err:
        raise dir_error(where, "it is not a directory") from err
    present = {entry.name for entry in entries}
    found: list[CachedFile] = []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith((".stamp", ".lock")):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
            regular = entry.is_file(follow_symlinks=False)
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # removed since the listing
            continue
        path = where / name
        stamp = read_stamp(stamp_of(path)) if regular and f"{name}.stamp" in present else None
        kind, base = _kind_of(name, stamp)
        related = tuple(where / f"{name}{suffix}" for suffix in (".stamp", ".lock") if f"{name}{suffix}" in present)
        digest = str(stamp["sha256"]) if stamp is not None else None
        checked = stamp is not None and stamp.get("checked") is True
        found.append(CachedFile(path, kind if regular else "not a regular file", base, size, related, digest, checked))
    bases = {entry.base for entry in found}
    for name in sorted(present):  # the locks of failed downloads: nothing else lists them
        if name.endswith(".lock") and not name.startswith(".") and name[: -len(".lock")] not in bases | present:
            with contextlib.suppress(OSError):
                found.append(
                    CachedFile(where / name, "lock", name[: -len(".lock")], os.lstat(where / name).st_size, (), None)
                )
    return sorted(found, key=lambda entry: entry.path.name)


def _kind_of(name: str, stamp: dict[str, Any] | None) -> tuple[str, str]:
    """(kind, the checkpoint it belongs to) of a file named `name` whose stamp (if any) is `stamp`."""
    for kind, pattern in (("partial", _PARTIAL), ("corrupt", _CORRUPT)):
        match = pattern.fullmatch(name)
        if match:
            return kind, match.group(1)
    if name.endswith(".zip") and stamp is not None and "source_sha256" in stamp:  # written by loading._convert
        return "zip copy", name[: -len(".zip")]
    return "checkpoint", name


def remove_cached(*names: str, folder: str | os.PathLike[str] | None = None, local_stamps: bool = False) -> Removed:
    """Delete files from a cache or mirror folder by the names `cached_files` lists.

    A checkpoint's name takes all that belongs to it: stamp, lock, zip copy, partial downloads and
    corrupt copies. The name of a zip copy, partial or corrupt copy takes only that file (and its stamp
    and lock). What another live process holds (the partial file of a running download, a held lock) is
    left in place.

    Args:
        *names: file names as listed (`CachedFile.path.name`); names that are not in the folder are ignored.
        folder: the folder; None for the cache directory.
        local_stamps: also forget the digests recorded for local files (`.stamps/`), which are then hashed
            again on their next use (`vggnet cache --clear`).

    Returns:
        What was deleted and what was left because a process holds it.
    """
    where = cache_dir() if folder is None else Path(folder)
    try:
        return _remove_all(where, names, local_stamps=local_stamps)
    except OSError as err:
        if isinstance(err, NotADirectoryError) or err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise dir_error(
            where,
            f"cannot remove {Path(err.filename or '').name or 'files'} from it ({err.strerror or err})",
            need="a writable directory to remove files from it",
        ) from err


def _remove_all(where: Path, names: tuple[str, ...], *, local_stamps: bool) -> Removed:
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
            if (
                not os.path.lexists(where / name)
                and os.path.lexists(path)
                and path not in skipped
                and not _remove(path)
            ):
                skipped.append(path)
    if local_stamps and (where / ".stamps").is_dir() and not (where / ".stamps").is_symlink():
        shutil.rmtree(where / ".stamps")
    return Removed(tuple(removed), tuple(skipped))


def _remove(path: Path) -> bool:
    """Delete `path`; False, leaving it, if it is a partial download or lock that a live process holds."""
    if not path.name.endswith((".partial", ".lock")) or not is_regular(path):  # a planted link: only its name goes
        path.unlink(missing_ok=True)
        return True
    if sys.platform == "win32":  # no flock there, but a file another process has open cannot be deleted
        try:
            path.unlink(missing_ok=True)
        except PermissionError:
            return False
        return True
    f = claim(path, write=False)
    if f is None:  # a running download or a lock holder has its flock on it, unless it is gone
        if os.path.lexists(path) and not os.access(path.parent, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return not os.path.lexists(path)
    with f:
        path.unlink(missing_ok=True)
    return True
