"""Weight files by format: which one a file is (read from its content), and reading and writing tensors.

A file's format is read from its first bytes, never from its name:

- "zip": PyTorch's zip serialization (`torch.save` since 1.6), "PK\\x03\\x04".
- "pickle": PyTorch's legacy (pre-1.6) serialization, a pickle stream ("\\x80" and a protocol byte).
- "safetensors": an 8-byte little-endian header length, then a JSON header starting with "{".
- "hdf5": Keras' weight files, "\\x89HDF\\r\\n\\x1a\\n".

The two PyTorch formats are loaded with `weights_only=True`; safetensors files are memory-mapped and
hold no pickle at all (the `safetensors` package, `pip install 'vggnet[safetensors]'`); HDF5 needs
`h5py` (`pip install 'vggnet[keras]'`) and is read as named arrays (`read_keras_layers`). What the
keys mean (vggnet's, timm's or Keras' layout) is `vggnet.models.layouts`'.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from vggnet.errors import BadCheckpointError, DiskError, MissingDependency, UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FORMATS",
    "WRITE_SUFFIXES",
    "Format",
    "detect_format",
    "file_sha256",
    "load_safetensors",
    "read_keras_layers",
    "read_tensors",
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


def sniff_format(path: str | os.PathLike[str]) -> Format | None:
    """The format of a weights file, read from its first bytes; None when it is none of `FORMATS`."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
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


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of a weights file, read from its first bytes ("zip", "pickle", "safetensors", "hdf5")."""
    fmt = sniff_format(path)
    if fmt is not None:
        return fmt
    with open(path, "rb") as f:
        head = f.read(9)
    raise BadCheckpointError(
        f"{path} is not a weights file vggnet reads: its first bytes {head!r} match none of "
        f"{', '.join(FORMATS)} (PyTorch zip or legacy pickle, safetensors, Keras HDF5); "
        "check that the download is complete and is not an HTML error page"
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The full SHA-256 of a file, in hex."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch
    except ImportError as err:
        raise MissingDependency(
            "safetensors files need the safetensors package: pip install 'vggnet[safetensors]'"
        ) from err
    return safetensors.torch


def load_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, memory-mapped (no pickle involved)."""
    state: dict[str, torch.Tensor] = _safetensors_torch().load_file(os.fspath(path), device=str(device))
    return state


def save_safetensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write `state` as safetensors, atomically (a temporary file in the same folder, then a rename)."""
    st = _safetensors_torch()
    # safetensors refuses views that share storage or are not contiguous: give it plain tensors.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    _atomic_write(
        Path(path), lambda tmp: st.save_file(tensors, os.fspath(tmp), metadata={"format": "pt", **(metadata or {})})
    )


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_tensors(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch or safetensors file, its format read from its content, keys as stored.

    PyTorch files load with `weights_only=True` (zip files memory-mapped); a training checkpoint holding
    the state dict under "state_dict" or "model" is unwrapped. Keras HDF5 files are `read_keras_layers`'.
    """
    fmt = detect_format(path)
    if fmt == "hdf5":
        raise UsageError(f"{path} is a Keras HDF5 file: read it with read_keras_layers")
    if fmt == "safetensors":
        return load_safetensors(path, map_location)
    if str(path).endswith(".safetensors"):  # torch.load would hand the name to safetensors: give it the bytes
        with open(path, "rb") as f:
            return _torch_state(torch.load(f, map_location=map_location, weights_only=True), path)
    return _torch_state(torch.load(path, map_location=map_location, weights_only=True, mmap=fmt == "zip"), path)


def _torch_state(obj: object, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadCheckpointError(
            f"{path} does not hold a state dict (a mapping of names to tensors) but a {type(obj).__name__}; "
            "save model.state_dict(), not the model"
        )
    return dict(obj)


def write_tensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> str:
    """Write `state` to `path` in the format its suffix names, read it back, and return the file's SHA-256.

    Suffixes: .safetensors, or .pth/.pt/.bin (PyTorch's zip format). The file is written to a temporary
    name and renamed; it is read back and compared tensor by tensor before the digest is returned.
    """
    path = Path(path)
    fmt = WRITE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell which format to write from {path.name!r}; use one of the suffixes "
            f"{', '.join(WRITE_SUFFIXES)} (.safetensors for safetensors, the others for PyTorch's zip format)"
        )
    if fmt == "safetensors":
        save_safetensors(state, path, metadata)
    else:
        plain = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        _atomic_write(path, lambda tmp: torch.save(plain, tmp))
    back = load_safetensors(path) if fmt == "safetensors" else torch.load(path, weights_only=True, mmap=True)
    if back.keys() != state.keys() or not all(torch.equal(back[k], state[k].detach().cpu()) for k in state):
        raise DiskError(f"{path} does not read back as what was written; the disk may be full or failing")
    return file_sha256(path)


# --- Keras HDF5 files -------------------------------------------------------------------------------------------


def _h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as err:
        raise MissingDependency("Keras .h5 weight files need h5py: pip install 'vggnet[keras]'") from err


def _names_attr(group: Any, name: str) -> list[str]:
    """A list-of-names attribute, joined when Keras split it into `name0`, `name1`, ... (HDF5's header limit)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_layers(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays in Keras' order (kernel, bias), for the layers that have weights."""
    import numpy as np

    layers: dict[str, list[np.ndarray]] = {}
    with _h5py().File(path, "r") as f:
        root = f.get("model_weights", f)  # a whole model saved as .h5 keeps its weights in a group
        if "layer_names" in root.attrs:  # Keras 1/2 legacy layout, as the published files
            for name in _names_attr(root, "layer_names"):
                group = root[name]
                arrays = [np.asarray(group[w]) for w in _names_attr(group, "weight_names")]
                if arrays:
                    layers[name] = arrays
        elif "layers" in root:  # Keras 3 `.weights.h5`: layers/<class name>/vars/{0,1}, the layer's name an attribute
            for group in root["layers"].values():
                if "vars" not in group or not len(group["vars"]):
                    continue
                vars_ = group["vars"]
                name = vars_.attrs.get("name", "")
                name = name.decode("utf8") if isinstance(name, bytes) else str(name)
                layers[name] = [np.asarray(vars_[str(i)]) for i in range(len(vars_))]
        else:
            raise BadCheckpointError(
                f"{path} is an HDF5 file but not Keras weights: it has neither a 'layer_names' attribute "
                "(Keras 1/2, the published VGG16/VGG19 files) nor a 'layers' group (Keras 3 .weights.h5)"
            )
    return layers
