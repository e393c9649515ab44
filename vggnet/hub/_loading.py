"""torch.load, weights only, of a verified open file: the loading half of the hub.

`open_checked` opens the file `hub.fetch` verified once, checks that open file against its digest
(a stamp matched by fstat, else hashed) and hands it on as a `VerifiedFile`; everything that reads
weights then reads that same open file (memory-mapped through /proc/self/fd/N where the system has
it), so a rename between the check and the read cannot change what is read (issues 11, 24). A pickle
asking for code is refused before any of it runs; a checkpoint must hold a state dict where vggnet
looks. Legacy-format (pre-1.6) files are loaded through a verified zip-format copy, written once,
so that later loads can memory-map them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from vggnet.errors import (
    ChecksumError,
    CorruptCheckpointError,
    NotAStateDict,
    UnsafeCheckpointError,
    UsageError,
    VggnetError,
)
from vggnet.hub._cache import (
    LOCAL_STAMPS,
    local_stamp_path,
    open_file_digest,
    read_stamp,
    stamp_matches,
    stamp_of,
    write_stamp,
)
from vggnet.hub._files import create_private, fd_path, hash_file, open_read, publish, temp_name
from vggnet.hub._formats import Format, load_safetensors, safetensors_torch, sniff_format
from vggnet.hub._locks import lock

__all__ = [
    "MapLocation",
    "VerifiedFile",
    "load_verified",
    "read_tensors",
    "weights_only_load",
]

logger = logging.getLogger(__name__)

MapLocation = str | torch.device | None


# --- the verified open file ------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedFile:
    """A weights file opened once and checked against its digest: read it through `file`, never by `path` again.

    Attributes:
        file: the open file, positioned anywhere; readers seek as they need.
        path: its name, for messages (a file renamed over that name since is never read).
        sha256: the digest the open file matched; None for a local file given without one (opened once and read
            as it is).
        format: its format, read from its first bytes ("zip", "pickle", "safetensors", "hdf5"); None: none vggnet
            reads.
        where: the cache folder holding its stamp and, for a legacy-format file, its zip copy; None for an
            unchecked local file.
    """

    file: IO[bytes]
    path: Path
    sha256: str | None
    format: Format | None
    where: Path | None


@contextlib.contextmanager
def open_checked(path: Path, digest: str, *, where: Path) -> Iterator[VerifiedFile]:
    """`path` opened once, that open file checked against `digest`; ChecksumError if it is not that file (any more).

    The stamp of a file in `where` (the cache) is `NAME.stamp`; any other file is the caller's own or a
    mirror's (reached through a link if need be), its stamp in `where/.stamps`. A stamp counts only
    while it describes the open file (fstat), else the open file is hashed.
    """
    local = path.parent != where  # the caller's own file or a mirror directory's, not one in the cache
    stamp = local_stamp_path(path, where / LOCAL_STAMPS) if local else stamp_of(path)
    with open_read(path, follow=local) as f:
        actual = open_file_digest(f, path, stamp, None)  # None: a stamp is not marked checked for an unpinned file
        if actual != digest:
            raise ChecksumError(
                str(path), path, digest, actual, detail="it changed after it was verified, and was not loaded",
                hint="Something else is writing to this file: load again, and find what replaces it.",
            )  # fmt: skip
        yield VerifiedFile(f, path, digest, sniff_format(f), where)


@contextlib.contextmanager
def open_unchecked(path: Path) -> Iterator[VerifiedFile]:
    """The caller's own file, given without a digest: opened once (through a link if need be) and read as it is."""
    with open_read(path, follow=True) as f:
        yield VerifiedFile(f, path, None, sniff_format(f), None)


def load_verified(path: Path, digest: str, *, where: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    """Load the file `hub.fetch` verified, from the open file checked against `digest` (see `open_checked`)."""
    with open_checked(path, digest, where=where) as verified:
        return read_tensors(verified, map_location)


def read_tensors(
    source: str | os.PathLike[str] | VerifiedFile, map_location: MapLocation = "cpu"
) -> dict[str, torch.Tensor]:
    """The state dict a PyTorch or safetensors file holds, its format read from its content, keys as stored.

    Args:
        source: a `VerifiedFile` (read through its open file), or a path, opened once and read as it is.
        map_location: where the tensors go (torch.load's argument).

    Returns:
        The state dict: the file's mapping of names to tensors, or the one it holds under "state_dict"
            or "model" (a training checkpoint).

    Raises:
        BadCheckpointError: the file is none of the formats, holds no state dict, is cut short, or
            (UnsafeCheckpointError) holds pickled code, none of which ran. One line naming the file.
        UsageError: a Keras HDF5 file, which `read_keras_layers` reads.
    """
    if not isinstance(source, VerifiedFile):
        with open_unchecked(Path(source)) as opened:
            return read_tensors(opened, map_location)
    f, path, fmt = source.file, source.path, source.format
    if fmt == "hdf5":
        raise UsageError(f"{path} is a Keras HDF5 file: read it with read_keras_layers")
    if fmt == "safetensors":  # memory-mapped by safetensors, without pickle
        return _safetensors(f, path, "cpu" if map_location is None else map_location)
    if fmt == "zip":
        return _state_dict(weights_only_load(f, path, mmap=True, map_location=map_location), path)
    if fmt == "pickle" and source.where is not None and source.sha256 is not None:
        copy = _zip_copy(f, path, source.sha256, source.where)
        if copy is not None:
            copy_path = source.where / f"{path.name}.zip"
            with copy:
                return _state_dict(weights_only_load(copy, copy_path, mmap=True, map_location=map_location), copy_path)
    # a legacy file read once, or none of the formats: torch.load says what it is not, in one line
    return _state_dict(weights_only_load(f, path, mmap=False, map_location=map_location), path)


def _safetensors(f: IO[bytes], path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The tensors of the open safetensors file `f`: memory-mapped through /proc/self/fd, else read whole."""
    named = fd_path(f)
    try:
        if named is not None:
            return load_safetensors(named, device)
        f.seek(0)
        state: dict[str, torch.Tensor] = safetensors_torch().load(f.read())
        return {k: v.to(device) for k, v in state.items()}
    except (VggnetError, OSError):
        raise
    except Exception as err:  # SafetensorError (a bad header, offsets past the end), torch's own on a bad dtype
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptCheckpointError(
            f"{path} could not be read as a safetensors file (corrupt, cut short?): {detail}"
        ) from None


# --- torch.load, weights only ----------------------------------------------------------------------

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def weights_only_load(f: IO[bytes], path: Path, *, mmap: bool, map_location: MapLocation) -> Any:
    """Run torch.load on the open file `f` with `weights_only=True`, memory-mapped through /proc/self/fd if asked.

    torch.load memory-maps only a named file: /proc/self/fd/N names the very file `f` holds open, whatever
    has been renamed since. Elsewhere the file is read through `f`, without mmap.

    Args:
        f: the open file; it is read from its start.
        path: its name, for messages.
        mmap: memory-map the tensors (a zip-format file) instead of reading them into memory.
        map_location: where the tensors go (as in `torch.load`); None keeps them where they were saved.

    Returns:
        What the file holds: tensors, and dicts, lists, strings and numbers of them.

    Raises:
        UnsafeCheckpointError: the pickle asks for code (a global that is not a tensor type); one line naming
            the file and the global, not torch's advice to load it unsafely.
        CorruptCheckpointError: the file cannot be read as a PyTorch checkpoint (cut short, not one at all).
    """
    f.seek(0)
    named = fd_path(f) if mmap else None
    try:
        if named is not None:
            return torch.load(named, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        # `from None`: torch's text suggests weights_only=False, the one thing never to do with this file
        raise UnsafeCheckpointError(path, found.group(1) if found else None) from None
    except (VggnetError, OSError):
        raise
    except Exception as err:  # a cut zip (RuntimeError); a text file is a KeyError, an empty one EOFError; any other
        detail = str(err).splitlines()[0] if isinstance(err, RuntimeError) and str(err) else type(err).__name__
        raise CorruptCheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (corrupt, cut short?): {detail}"
        ) from err


# --- the state dict a checkpoint holds -------------------------------------------------------------


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


# --- legacy-format files: a verified zip copy ------------------------------------------------------


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
    stamp = read_stamp(stamp_of(copy))
    if stamp is None or stamp.get("source_sha256") != source_digest:
        return None
    try:
        f = open_read(copy)
    except OSError as err:  # gone, or not a regular file (logged): made again
        logger.debug("cannot open %s: %s", copy, err)
        return None
    st = os.fstat(f.fileno())
    if stamp_matches(stamp, st):
        return f
    if hash_file(f) != stamp["sha256"]:
        logger.warning("%s changed on disk; converting again", copy)
        f.close()
        return None
    write_stamp(copy, str(stamp["sha256"]), checked=True, source_sha256=source_digest, st=st)
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
            write_stamp(copy, written, checked=True, source_sha256=digest, st=os.fstat(f.fileno()))
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote a memory-mappable zip copy of %s in %.1f s", path.name, time.perf_counter() - started)
