"""Weight files in other formats and layouts: safetensors, timm's layout, Keras' HDF5 files.

A file's format is read from its first bytes, never from its name:

- "zip": PyTorch's zip serialization (`torch.save` since 1.6), "PK\\x03\\x04".
- "pickle": PyTorch's legacy (pre-1.6) serialization, a pickle stream ("\\x80" and a protocol byte).
- "safetensors": an 8-byte little-endian header length, then a JSON header starting with "{".
- "hdf5": Keras' weight files, "\\x89HDF\\r\\n\\x1a\\n".

The two PyTorch formats are loaded with `weights_only=True`; safetensors files are memory-mapped and
hold no pickle at all (the `safetensors` package, `pip install 'vggnet[safetensors]'`); HDF5 needs
`h5py` (`pip install 'vggnet[keras]'`).

Layouts (the key names and shapes inside a file):

- "vggnet": torchvision's `features.N`, `classifier.{0,3,6}`, what every vggnet model loads.
- "timm": timm's VGG keeps `features.N` but runs fc6 and fc7 as convolutions: `pre_logits.fc1` is
  fc6 as a 7x7 convolution (4096, 512, 7, 7), `pre_logits.fc2` is fc7 as a 1x1 convolution
  (4096, 4096, 1, 1) and `head.fc` is fc8. Conversion is a reshape both ways, so it is bit-exact.
- "keras": Keras' `VGG16`/`VGG19` (`block{b}_conv{c}`, `fc1`, `fc2`, `predictions`), in the legacy
  HDF5 layout of the published `vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5` files or the
  `.weights.h5` layout Keras 3's `save_weights` writes. Convolution kernels are (3, 3, in, out),
  dense kernels (in, out), and fc1's rows follow the channels-last flatten of the (7, 7, 512) map.
  The network was trained on BGR input: `from_keras` permutes conv1_1's input channels so the
  converted model takes RGB like every other vggnet model (its presets, taps, losses and the CLI
  all feed RGB), and `transforms.keras_transforms` is Keras' `preprocess_input` ("caffe" mode) in RGB order.
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

from vggnet.models.config import ARCHS, CONFIGS, HIDDEN, POOLED_SIZE, arch_config

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "detect_format",
    "file_sha256",
    "from_keras",
    "from_timm",
    "layout_of",
    "load_keras",
    "load_safetensors",
    "read_state_dict",
    "save_safetensors",
    "sniff_format",
    "to_timm",
    "write_state_dict",
]

Format = Literal["zip", "pickle", "safetensors", "hdf5"]
Layout = Literal["vggnet", "timm"]
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


_FC6 = "classifier.0."
_FC7 = "classifier.3."
_FC8 = "classifier.6."
_TIMM = {_FC6: "pre_logits.fc1.", _FC7: "pre_logits.fc2.", _FC8: "head.fc."}


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
    raise ValueError(
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
        raise ImportError("safetensors files need the safetensors package: pip install 'vggnet[safetensors]'") from err
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


def read_state_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Any weights file, its format read from its content, as a state dict in vggnet's layout.

    PyTorch files load with `weights_only=True` (zip files memory-mapped); a training checkpoint holding
    the state dict under "state_dict" or "model" is unwrapped. timm-layout state dicts (a Hub
    `model.safetensors`) are converted; Keras HDF5 files go through `from_keras`.
    """
    fmt = detect_format(path)
    if fmt == "hdf5":
        return load_keras(path)[1]
    if fmt == "safetensors":
        state = load_safetensors(path, map_location)
    elif str(path).endswith(".safetensors"):  # torch.load would hand the name to safetensors: give it the bytes
        with open(path, "rb") as f:
            state = _torch_state(torch.load(f, map_location=map_location, weights_only=True), path)
    else:
        state = _torch_state(torch.load(path, map_location=map_location, weights_only=True, mmap=fmt == "zip"), path)
    return from_timm(state) if layout_of(state) == "timm" else state


def _torch_state(obj: object, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of names to tensors) but a {type(obj).__name__}; "
            "save model.state_dict(), not the model"
        )
    return dict(obj)


def write_state_dict(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    layout: Layout = "vggnet",
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a vggnet state dict to `path` in the format its suffix names; return the written file's SHA-256.

    Suffixes: .safetensors, or .pth/.pt/.bin (PyTorch's zip format). `layout="timm"` converts first.
    The file is read back and compared tensor by tensor before the digest is returned.
    """
    path = Path(path)
    fmt = WRITE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell which format to write from {path.name!r}; use one of the suffixes "
            f"{', '.join(WRITE_SUFFIXES)} (.safetensors for safetensors, the others for PyTorch's zip format)"
        )
    if layout not in ("vggnet", "timm"):
        raise ValueError(f"layout must be 'vggnet' or 'timm', got {layout!r}")
    out = to_timm(state) if layout == "timm" else dict(state)
    if fmt == "safetensors":
        save_safetensors(out, path, metadata)
    else:
        plain = {k: v.detach().to("cpu").contiguous() for k, v in out.items()}
        _atomic_write(path, lambda tmp: torch.save(plain, tmp))
    back = load_safetensors(path) if fmt == "safetensors" else torch.load(path, weights_only=True, mmap=True)
    if back.keys() != out.keys() or not all(torch.equal(back[k], out[k].detach().cpu()) for k in out):
        raise OSError(f"{path} does not read back as what was written; the disk may be full or failing")
    return file_sha256(path)


# --- the timm layout ---------------------------------------------------------------------------------


def layout_of(state: Mapping[str, torch.Tensor]) -> Layout:
    """ "timm" for timm's VGG keys (`pre_logits.fc1`, `head.fc`), else "vggnet"."""
    return "timm" if any(k.startswith(("pre_logits.", "head.fc.")) for k in state) else "vggnet"


def to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vggnet (torchvision) state dict in timm's layout: fc6 as a 7x7 conv, fc7 as a 1x1 conv, fc8 as head.fc."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in _TIMM if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        name = _TIMM[prefix] + key[len(prefix) :]
        if key == _FC6 + "weight":
            value = value.reshape(value.shape[0], -1, POOLED_SIZE, POOLED_SIZE)  # (4096, 25088) -> (4096, 512, 7, 7)
        elif key == _FC7 + "weight":
            value = value.reshape(*value.shape, 1, 1)  # (4096, 4096) -> (4096, 4096, 1, 1)
        out[name] = value
    return out


def from_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm VGG state dict in vggnet's (torchvision's) layout; the inverse of `to_timm`, bit-exact."""
    back = {v: k for k, v in _TIMM.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in back if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        name = back[prefix] + key[len(prefix) :]
        if name in (_FC6 + "weight", _FC7 + "weight"):
            value = value.reshape(value.shape[0], -1)  # (4096, 512, 7, 7) -> (4096, 25088), (4096, 4096, 1, 1) -> ...
        out[name] = value
    return out


# --- Keras -------------------------------------------------------------------------------------------


def _h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as err:
        raise ImportError("Keras .h5 weight files need h5py: pip install 'vggnet[keras]'") from err


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


def _keras_arrays(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
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
            raise ValueError(
                f"{path} is an HDF5 file but not Keras weights: it has neither a 'layer_names' attribute "
                "(Keras 1/2, the published VGG16/VGG19 files) nor a 'layers' group (Keras 3 .weights.h5)"
            )
    return layers


def from_keras(
    layers: Mapping[str, list[np.ndarray]], source: str = "the Keras weights"
) -> tuple[str, dict[str, torch.Tensor]]:
    """(builder name, vggnet state dict) from Keras VGG layers: `block{b}_conv{c}` [+ `fc1`, `fc2`, `predictions`].

    A file without the top (`notop`) gives only `features.*` keys. conv1_1's input channels are
    reversed (BGR -> RGB): use `transforms.keras_transforms()` as the preset.
    """
    convs = sorted(
        (k for k in layers if k.startswith("block") and "_conv" in k),
        key=lambda k: tuple(int(p) for p in k[len("block") :].split("_conv")),
    )
    arch = next(
        (a for a, (letter, bn) in ARCHS.items() if not bn and sum(v != "M" for v in CONFIGS[letter]) == len(convs)),
        None,
    )
    if arch is None:
        raise ValueError(
            f"{source} has {len(convs)} block*_conv* layers; a Keras VGG16 has 13 and a VGG19 16 "
            "(VGG11 8, VGG13 10); is it a Keras VGG file?"
        )
    row, _ = arch_config(arch)
    indices = [i for i, v in enumerate(_feature_index(row)) if v]
    state: dict[str, torch.Tensor] = {}
    for n, (name, index) in enumerate(zip(convs, indices)):
        kernel, bias = (torch.from_numpy(a.copy()) for a in layers[name])
        weight = kernel.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)
        if n == 0:
            weight = weight.flip(1).contiguous()  # BGR -> RGB: the converted model reads RGB
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = weight, bias
    dense = [k for k in ("fc1", "fc2", "predictions") if k in layers]
    if dense and dense != ["fc1", "fc2", "predictions"]:
        raise ValueError(f"{source} has the dense layers {dense}; a Keras VGG has fc1, fc2 and predictions, or none")
    for name, prefix in zip(dense, (_FC6, _FC7, _FC8)):
        kernel, bias = (torch.from_numpy(a.copy()) for a in layers[name])
        weight = kernel.t()  # (in, out) -> (out, in)
        if prefix == _FC6:
            # Keras flattens the (7, 7, 512) map channels-last, torch the (512, 7, 7) map: reorder fc6's columns.
            weight = weight.reshape(HIDDEN, POOLED_SIZE, POOLED_SIZE, -1).permute(0, 3, 1, 2).reshape(HIDDEN, -1)
        state[prefix + "weight"], state[prefix + "bias"] = weight.contiguous(), bias
    return arch, state


def load_keras(path: str | os.PathLike[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """(builder name, vggnet state dict) of a Keras VGG16/VGG19 `.h5` file (full or notop); see `from_keras`."""
    return from_keras(_keras_arrays(path), source=str(path))


def _feature_index(row: tuple[int | str, ...]) -> list[bool]:
    """For each module of a non-BN `make_layers(row)`, whether it is a convolution."""
    flags: list[bool] = []
    for v in row:
        flags += [False] if v == "M" else [True, False]  # conv, relu
    return flags
