"""Weight files by format: which one a file is (read from its content), and writing tensors.

A file's format is read from its first bytes, never from its name:

- "zip": PyTorch's zip serialization (`torch.save` since 1.6), "PK\\x03\\x04".
- "pickle": PyTorch's legacy (pre-1.6) serialization, a pickle stream ("\\x80" and a protocol byte).
- "safetensors": an 8-byte little-endian header length, then a JSON header starting with "{".
- "hdf5": Keras' weight files, "\\x89HDF\\r\\n\\x1a\\n".

The two PyTorch formats are loaded with `weights_only=True` (`_loading`); safetensors files are
memory-mapped and hold no pickle at all (the `safetensors` package, `pip install 'vggnet[safetensors]'`);
HDF5 needs `h5py` (`pip install 'vggnet[keras]'`) and is read as named arrays, strictly (`_hdf5`). What
the keys mean (vggnet's, timm's or Keras' layout) is `vggnet.models.layouts`'.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Literal

import torch

from vggnet.checks import same_bits
from vggnet.errors import BadCheckpointError, DiskError, MissingDependency, MissingPathError, UsageError
from vggnet.hub._files import fd_path, hash_file, open_read

__all__ = [
    "FORMATS",
    "WRITE_SUFFIXES",
    "Format",
    "detect_format",
    "file_sha256",
    "load_safetensors",
    "save_safetensors",
    "sniff_format",
    "write_tensors",
]

Format = Literal["zip", "pickle", "safetensors", "hdf5"]
FORMATS: tuple[Format, ...] = ("zip", "pickle", "safetensors", "hdf5")
# What `write_state_dict` writes, by the destination's suffix.
WRITE_SUFFIXES: Mapping[str, Literal["zip", "safetensors"]] = {
    ".safetensors": "safetensors",
    ".pth": "zip",
    ".pt": "zip",
    ".bin": "zip",
}

_ZIP = b"PK\x03\x04"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


# --- formats -----------------------------------------------------------------------------------------


def sniff_format(source: str | os.PathLike[str] | IO[bytes]) -> Format | None:
    """The format of a weights file (a path, or a file open for reading), read from its first bytes.

    Args:
        source: the file; an open one is read from its start, and left at its start.

    Returns:
        One of `FORMATS`, or None when it is none of them.
    """
    head, size = _head(source)
    if head.startswith(_ZIP):
        return "zip"
    if head.startswith(_HDF5):
        return "hdf5"
    # safetensors before pickle: a header length of 0x0280-0x0580 with low byte 0x80 starts the file as pickle's
    # PROTO opcode and version; torch's legacy pickle never has "{" at byte 8 (its magic number is there)
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= min(_SAFETENSORS_MAX_HEADER, size - 8):
            return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode and version
        return "pickle"
    return None


def _head(source: str | os.PathLike[str] | IO[bytes]) -> tuple[bytes, int]:
    """The first 9 bytes of a file and its size."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _head(f)
    source.seek(0)
    head = source.read(9)
    source.seek(0)
    return head, os.fstat(source.fileno()).st_size


def detect_format(source: str | os.PathLike[str] | IO[bytes], name: str | os.PathLike[str] | None = None) -> Format:
    """The format of a weights file, read from its first bytes ("zip", "pickle", "safetensors", "hdf5").

    Args:
        source: a path, or a file open for reading (read from its start, and left there).
        name: what the message calls the file (default: `source`'s path).

    Returns:
        The format.

    Raises:
        BadCheckpointError: the file is none of `FORMATS` (an HTML error page, a cut download).
    """
    fmt = sniff_format(source)
    if fmt is not None:
        return fmt
    head, _ = _head(source)
    raise BadCheckpointError(
        f"{name or source} is not a weights file vggnet reads: its first bytes {head!r} match none of "
        f"{', '.join(FORMATS)} (PyTorch zip or legacy pickle, safetensors, Keras HDF5); "
        "check that the download is complete and is not an HTML error page"
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hash a whole file with SHA-256.

    Args:
        path: the file to read.

    Returns:
        Its SHA-256, 64 lower-case hex digits.
    """
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def safetensors_torch() -> Any:
    """`safetensors.torch`, or MissingDependency naming the extra to install."""
    try:
        import safetensors.torch
    except ImportError as err:
        raise MissingDependency(
            "safetensors files need the safetensors package: pip install 'vggnet[safetensors]'"
        ) from err
    return safetensors.torch


def load_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file's tensors, memory-mapped (no pickle involved).

    Args:
        path: the .safetensors file.
        device: where the tensors go ("cpu", "cuda:0", ...).

    Returns:
        Name -> tensor, as stored.
    """
    state: dict[str, torch.Tensor] = safetensors_torch().load_file(os.fspath(path), device=str(device))
    return state


def save_safetensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a state dict as safetensors, atomically (a temporary file in the same folder, fsynced, then a rename).

    The file is read back and compared before it is renamed into place; a link at `path` is replaced,
    never written through.

    Args:
        state: name -> tensor; each is written contiguous, on the CPU.
        path: the file to write.
        metadata: string pairs for the safetensors header ("format": "pt" is added).
    """
    write_tensors(state, path, metadata=metadata, fmt="safetensors")


def write_tensors(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    fmt: Literal["zip", "safetensors"] | None = None,
) -> str:
    """Write `state` to `path` in the format its suffix names, read it back, and return the file's SHA-256.

    The file is written to a private temporary name in `path`'s folder and synced; that file is read
    back and compared tensor by tensor, bit for bit (a NaN is the NaN that was written), and hashed,
    then renamed over `path` (a link there is replaced, never followed). The digest is of those bytes.

    Args:
        state: the tensors, by name.
        path: the destination: .safetensors, or .pth/.pt/.bin (PyTorch's zip format).
        metadata: strings for the safetensors header ("format": "pt" is added).
        fmt: the format, instead of the suffix's.

    Returns:
        The written file's SHA-256.

    Raises:
        UsageError: an unknown suffix, or `path` is a folder.
        MissingPathError: `path`'s folder does not exist.
        DiskError: the file could not be written whole, or does not read back as written.
    """
    path = Path(path)
    fmt = fmt or WRITE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell which format to write from {path.name!r}; use one of the suffixes "
            f"{', '.join(WRITE_SUFFIXES)} (.safetensors for safetensors, the others for PyTorch's zip format)"
        )
    _check_destination(path)
    plain = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    write = _safetensors_writer(plain, metadata) if fmt == "safetensors" else lambda tmp: torch.save(plain, tmp)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            write(tmp)
        except OSError as err:
            raise DiskError(err.errno, f"cannot write {path}: {err.strerror or err}; nothing was kept") from err
        with open_read(tmp) as f:
            os.fsync(f.fileno())
            back = _read_back(f, tmp, fmt)
            if back.keys() != plain.keys() or not all(same_bits(back[k], plain[k]) for k in plain):
                raise DiskError(f"{path} does not read back as what was written; the disk may be full or failing")
            del back
            digest = hash_file(f)  # the bytes read back, under the name they get next
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return digest


def _check_destination(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{path} is a folder; name the file to write in it, e.g. {path / 'model.safetensors'}")
    if not path.parent.is_dir():
        raise MissingPathError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")


def _safetensors_writer(plain: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> Callable[[Path], Any]:
    st = safetensors_torch()
    # safetensors refuses views that share storage: give it plain tensors of their own.
    tensors = {k: v.clone() for k, v in plain.items()}
    return lambda tmp: st.save_file(tensors, os.fspath(tmp), metadata={"format": "pt", **(metadata or {})})


def _read_back(f: IO[bytes], tmp: Path, fmt: str) -> dict[str, torch.Tensor]:
    """The tensors of the file vggnet just wrote, read through its open descriptor."""
    named = fd_path(f)
    if fmt == "safetensors":
        if named is not None:
            return load_safetensors(named)
        f.seek(0)
        loaded: dict[str, torch.Tensor] = safetensors_torch().load(f.read())
        return loaded
    f.seek(0)
    back = torch.load(named or f, weights_only=True, mmap=named is not None)
    return dict(back)
