"""The cache folder: where checkpoints live, their names, the stamps that vouch for them, and what is cached.

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
a cache folder is opened by `files.open_fd`: never through a symbolic link, only if it is a
regular file, so a name planted by someone else who can write to the folder is refused, never followed.
Partial downloads and locks are `locks.py`'s; listing and removing what a folder holds is
`cache_admin.py`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import torch

from vggnet import settings
from vggnet.errors import ChecksumError, NotARegularFileError, UsageError
from vggnet.hub._files import (
    Progress,
    copy_hashing,
    create_private,
    hash_file,
    is_regular,
    kind_of_mode,
    open_dir,
    open_fd,
    open_read,
    temp_name,
    write_private_in,
)
from vggnet.settings import ENV_HOME, ENV_OFFLINE

__all__ = [
    "cache_dir",
    "file_name_from_url",
    "normalize_digest",
    "verify_file",
]

logger = logging.getLogger(__name__)


NAME_DIGEST = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's "name-<hex>.pth" convention
_DIGEST = re.compile(r"[0-9a-f]{8,64}")


LOCAL_HINT = (
    "The file is not the one the digest describes: replace it with a good copy, or check the path "
    "(VGGNET_MIRROR, for a mirror) and the digest."
)


def normalize_digest(sha256: str) -> str:
    """Check a SHA-256 digest or hex prefix and give it in lower case.

    Args:
        sha256: the full 64 hex digits, or a prefix of at least 8; any case.

    Returns:
        The digest in lower case.

    Raises:
        UsageError: it is not 8 to 64 hex digits (a ValueError; exit 2 on the command line).
    """
    digest = sha256.lower()
    if not _DIGEST.fullmatch(digest):
        raise UsageError(
            f"sha256 must be the 64 hex digits of the file's SHA-256, or at least its first 8, got {sha256!r}"
        )
    return digest


def cache_dir() -> Path:
    """Say where checkpoints are cached: $VGGNET_HOME, else torch.hub's checkpoint directory.

    torch.hub's directory is `$TORCH_HOME/hub/checkpoints` (default `~/.cache/torch/hub/checkpoints`),
    shared with torchvision. Nothing is created here; the first download creates the directory.

    Returns:
        The cache directory (it may not exist yet).
    """
    return settings.home() or torch_hub_checkpoints()


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def verify_file(path: str | os.PathLike[str], expected: str | None = None, *, progress: Progress | None = None) -> str:
    """Hash a file afresh (no stamp is trusted or written) and compare it with an expected digest.

    Args:
        path: the file; a link is followed (it is the caller's own path), but only a regular file is read.
        expected: the full digest or a prefix it must start with, in lower case; None only hashes.
        progress: called with each chunk's size in bytes while hashing (a progress bar's `update`).

    Returns:
        The file's full SHA-256, 64 lower-case hex digits.

    Raises:
        ChecksumError: the digest does not start with `expected`; `.actual` holds the digest found. The file
            is left where it is.
    """
    digest = hash_file(Path(path), progress, follow=True)  # the caller's own path; still only a regular file
    if expected is not None and not digest.startswith(expected):
        raise ChecksumError(str(path), path, expected, digest, detail="the file was left where it is", hint=LOCAL_HINT)
    return digest


# --- names and folders -----------------------------------------------------------------------------


def safe_name(name: str, *, source: str) -> str:
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
        raise UsageError(
            f"refusing the file name {decoded!r} taken from {source}: a checkpoint name must be a plain "
            "file name (no path separators, no leading dot, no control characters, at most 200 bytes); "
            "pass file_name= with a name such as 'model-1a2b3c4d.pth'"
        )
    return decoded


def file_name_from_url(url: str) -> str:
    """Give the file name a URL is cached under: its last path segment, percent-decoded.

    The segment is taken before decoding, so "a%2F..%2Fb" is refused, not shortened to "b".

    Args:
        url: the checkpoint's URL.

    Returns:
        A plain file name (no separator, no leading dot, no control characters, at most 200 bytes).
    """
    return safe_name(urlsplit(url).path.rsplit("/", 1)[-1], source=repr(url))


def same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_dir(folder: Path, *, create: bool) -> None:
    """Make sure `folder` can hold the cache (creating it if asked): an error naming it and the fix if not."""
    if folder.exists() and not folder.is_dir():
        raise dir_error(folder, "it is not a directory")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise dir_error(folder, f"cannot create it: {err.strerror or err}") from err


def dir_error(folder: Path, problem: str, need: str = "a writable directory") -> OSError:
    home = settings.home()
    if same_dir(folder, cache_dir()):
        what = f"the cache directory {ENV_HOME}={home}" if home else f"the cache directory {folder} (torch.hub's)"
        fix = f"point {ENV_HOME} at one, or unset it to use torch.hub's" if home else f"set {ENV_HOME} to one"
    else:
        what, fix = f"the directory {folder}", "choose another (model_dir=, --to)"
    return OSError(f"{what} cannot hold checkpoints: {problem}. It must be {need}; {fix}")


# --- what is cached: checked, moved aside, adopted ------------------------------------------------


def digest_matches(digest: str, expected: str | None) -> bool:
    return expected is None or digest.startswith(expected)


def cached_digest(dest: Path, expected: str | None, url: str) -> str | None:
    """The digest of a cached file that matches `expected`; a mismatching file is moved aside (None)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):  # planted: a link, a FIFO; renaming it follows nothing
        digest, problem = "", f"it is {kind_of_mode(st.st_mode)}, not a regular file"
    else:
        try:
            digest = file_digest(dest, stamp_of(dest), expected)
        except NotARegularFileError:  # replaced since the lstat
            return cached_digest(dest, expected, url)
        if digest_matches(digest, expected):
            return digest
        problem = f"SHA-256 {digest} does not match {expected}"
    # Move aside only the file we checked: another process may have put a good one in place since.
    if os.lstat(dest).st_ino != st.st_ino:
        return cached_digest(dest, expected, url)
    aside = dest.with_name(f"{dest.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    os.replace(dest, aside)
    stamp_of(dest).unlink(missing_ok=True)
    logger.warning("%s: %s; moved it aside to %s", dest, problem, aside.name)
    if not digest:
        if settings.offline():
            raise NotARegularFileError(dest, f"{kind_of_mode(st.st_mode)} (moved aside to {aside.name})")
        return None
    assert expected is not None  # digest_matches is True without an expectation
    if settings.offline():
        raise ChecksumError(
            url, dest, expected, digest,
            detail=f"the cached file was moved aside to {aside} and, with {ENV_OFFLINE} set, not fetched again",
            hint=f"Unset {ENV_OFFLINE} to download a good copy, or put one in {dest.parent}.",
        )  # fmt: skip
    return None


def adopt(src: Path, dest: Path, expected: str) -> str | None:
    """Hard-link (or copy) a file from torch.hub's cache into ours, if its digest matches."""
    if not is_regular(src):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)  # offline, nothing else has created it
    tmp = temp_name(dest)
    try:
        try:
            os.link(src, tmp)  # hash the linked inode, not the name, so what is checked is what is kept
            digest = hash_file(tmp)
        except NotARegularFileError:
            logger.warning("ignoring %s: it is not a regular file", src)
            return None
        except OSError:
            try:
                digest = copy_hashing(src, tmp)
            except NotARegularFileError:
                logger.warning("ignoring %s: it is not a regular file", src)
                return None
        if not digest.startswith(expected):
            logger.warning("ignoring %s: its SHA-256 %s does not match %s", src, digest, expected)
            return None
        with open_read(tmp) as held:  # the inode hashed: the stamp describes it, not whatever dest names later
            os.replace(tmp, dest)
            st = os.fstat(held.fileno())  # after the rename, which changes its ctime
        write_stamp(dest, digest, checked=True, st=st)
        logger.info("reused %s from torch.hub's cache (SHA-256 verified)", src)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


# --- stamps and hashing ----------------------------------------------------------------------------


def stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def local_stamp_path(path: Path, stamps: Path) -> Path:
    """Where the stamp of a local file (the caller's, a mirror directory's) lives: `.stamps/` of the cache."""
    return stamps / f"{hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:32]}.json"


def _stat_fields(st: os.stat_result) -> dict[str, int]:
    # ctime cannot be set by utime, so a byte changed in place is seen even when mtime was restored.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


_STAMP_MAX = 1 << 16  # bytes: a stamp is a line of JSON
LOCAL_STAMPS = ".stamps"  # the folder of the local files' stamps, in the cache folder
_DIR_FDS = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


def read_stamp(stamp: Path) -> dict[str, Any] | None:
    """The JSON a stamp holds, or None (none, unreadable, or not reached the way `_stamp_folder` allows)."""
    try:
        folder = _stamp_folder(stamp, create=False)
    except OSError as err:  # none yet, or a link in place of `.stamps`
        _log_folder(stamp, err, "reading")
        return None
    try:
        with os.fdopen(open_fd(Path(stamp.name), dir_fd=folder), "rb") as f:
            data = json.loads(f.read(_STAMP_MAX).decode("utf-8"))
    except NotARegularFileError as err:
        logger.warning("%s", err)
        return None
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    finally:
        _close(folder)
    return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None


def _stamp_folder(stamp: Path, *, create: bool) -> int | None:
    """The open folder `stamp` is written in (None where the system has no directory descriptors).

    The cache's `.stamps/` (the local files' stamps) is vggnet's own: a link in its place is
    never followed, so no stamp is read from or written to wherever it points. The folder of a
    `NAME.stamp` is the cache folder itself, which the user may well reach through a link.
    """
    folder = stamp.parent
    if create:
        with contextlib.suppress(FileExistsError):  # a dangling link in its place: open_dir names it below
            folder.mkdir(parents=True, exist_ok=True)
    if not _DIR_FDS:
        if folder.name == LOCAL_STAMPS and folder.is_symlink():
            raise NotARegularFileError(folder, "a symbolic link")
        return None
    return open_dir(folder, follow=folder.name != LOCAL_STAMPS)


def _close(folder: int | None) -> None:
    if folder is not None:
        os.close(folder)


def _log_folder(stamp: Path, err: OSError, doing: str) -> None:
    if isinstance(err, NotARegularFileError):  # stamps only save hashing: the file is hashed instead
        logger.debug(
            "not %s %s: %s is a link or not a folder, so it is not vggnet's folder of stamps (remove it)",
            doing, stamp.name, stamp.parent,
        )  # fmt: skip
    elif not isinstance(err, FileNotFoundError):
        logger.debug("cannot open %s: %s", stamp.parent, err)


def stamp_matches(stamp: dict[str, Any] | None, path: Path | os.stat_result) -> bool:
    """`stamp` still describes `path` (its lstat: a link is never its target), or an fstat result."""
    try:
        st = path if isinstance(path, os.stat_result) else os.lstat(path)
    except OSError:
        return False
    fields = _stat_fields(st)
    return stamp is not None and stat.S_ISREG(st.st_mode) and all(stamp.get(k) == v for k, v in fields.items())


def write_stamp(
    path: Path, digest: str, stamp: Path | None = None, *, checked: bool, st: os.stat_result, **extra: str
) -> None:
    """Record `path`'s stat and digest. A cache we cannot write to only costs a re-hash next time.

    `checked` says the digest matched an expected one (a record's, a sha256 argument, a torch.hub
    name's) or is of bytes vggnet wrote itself; only then may `vggnet verify` take it as the reference.
    `st` is the stat of the very file that was hashed or matched, taken before: never `path` looked up
    again, which may name another file by now.
    """
    stamp = stamp or stamp_of(path)
    data = {"file": str(path), **_stat_fields(st), "sha256": digest, "checked": checked, **extra}
    try:
        folder = _stamp_folder(stamp, create=True)
    except OSError as err:  # a link in place of `.stamps`, a read-only cache
        _log_folder(stamp, err, "writing")
        return
    try:
        if folder is not None:
            write_private_in(folder, stamp.name, json.dumps(data).encode("utf-8"))
        else:
            _write_by_name(stamp, json.dumps(data).encode("utf-8"))
    except OSError as err:
        logger.debug("could not write %s: %s", stamp, err)
    finally:
        _close(folder)


def _write_by_name(stamp: Path, data: bytes) -> None:
    """`write_private_in` where the system has no directory descriptors (Windows)."""
    tmp = temp_name(stamp)
    try:
        with create_private(tmp) as f:
            f.write(data)
        os.replace(tmp, stamp)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def stamped_digest(
    path: Path, stamp_path: Path | None = None, expected: str | None = None, *, st: os.stat_result | None = None
) -> str | None:
    """The digest `path`'s stamp records, while the stamp still describes it (or `st`, an open file's fstat).

    A stamp whose digest matches `expected` is marked checked, if it was not yet.
    """
    stamp_path = stamp_path or stamp_of(path)
    if st is None:  # one lstat, for the match and for the rewrite: `path` may name another file in between
        try:
            st = os.lstat(path)
        except OSError:
            return None
    stamp = read_stamp(stamp_path)
    if stamp is None or not stamp_matches(stamp, st):
        return None
    digest = str(stamp["sha256"])
    if expected is not None and stamp.get("checked") is not True and digest.startswith(expected):
        write_stamp(path, digest, stamp_path, checked=True, st=st)
    return digest


def file_digest(path: Path, stamp_path: Path, expected: str | None, *, follow: bool = False) -> str:
    """`path`'s full SHA-256: from its stamp while the stamp still describes it, else hashed (and stamped).

    The stamp records whether the digest matched `expected` (see `write_stamp`). `follow`: the
    caller's own file may be reached through a link; a file in the cache never is.
    """
    with open_read(path, follow=follow) as f:
        return open_file_digest(f, path, stamp_path, expected)


def open_file_digest(f: IO[bytes], path: Path, stamp_path: Path, expected: str | None) -> str:
    """`file_digest` of the open file `f` (named `path`): its stamp must describe this very file (fstat)."""
    st = os.fstat(f.fileno())
    digest = stamped_digest(path, stamp_path, expected, st=st)
    if digest is None:
        digest = hash_file(f)
        write_stamp(path, digest, stamp_path, checked=expected is not None and digest.startswith(expected), st=st)
    return digest
