"""Layouts: what the keys and shapes of a weights file mean, and turning each into vggnet's.

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
  all feed RGB), and `data.transforms.keras_transforms` is Keras' `preprocess_input` ("caffe" mode)
  in RGB order.

Which format a file is and reading its tensors are the store's (`vggnet.hub`); this module gives them meaning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch

from vggnet.errors import BadCheckpointError, UsageError
from vggnet.hub import VerifiedFile, detect_format, read_keras_layers, read_tensors, write_tensors
from vggnet.models.config import ARCHS, CONFIGS, HIDDEN, IN_CHANNELS, POOLED_SIZE, Layer, arch_config

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Layout",
    "from_keras",
    "from_timm",
    "keras_shapes",
    "layout_of",
    "load_keras",
    "read_state_dict",
    "to_timm",
    "write_state_dict",
]

Layout = Literal["vggnet", "timm"]

_FC6 = "classifier.0."
_FC7 = "classifier.3."
_FC8 = "classifier.6."
_TIMM = {_FC6: "pre_logits.fc1.", _FC7: "pre_logits.fc2.", _FC8: "head.fc."}


def read_state_dict(
    source: str | os.PathLike[str] | VerifiedFile, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Any weights file, its format read from its content, as a state dict in vggnet's layout.

    PyTorch files load with `weights_only=True` (zip files memory-mapped); a training checkpoint holding
    the state dict under "state_dict" or "model" is unwrapped. timm-layout state dicts (a Hub
    `model.safetensors`) are converted; Keras HDF5 files go through `from_keras`.

    Args:
        source: a path, or a `hub.open_verified` file (read through the open file that was checked).
        map_location: where the tensors go.

    Returns:
        The state dict, in vggnet's keys.
    """
    fmt = source.format if isinstance(source, VerifiedFile) else detect_format(source)
    if fmt == "hdf5":
        return load_keras(source)[1]
    state = read_tensors(source, map_location)
    return from_timm(state) if layout_of(state) == "timm" else state


def write_state_dict(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    layout: Layout = "vggnet",
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a vggnet state dict to `path` in the format its suffix names, read it back, and return its SHA-256.

    The file is written to a private temporary file and renamed into place; it is read back and compared
    tensor by tensor before the digest is returned.

    Args:
        state: a state dict in vggnet's (torchvision's) keys.
        path: the file to write: .safetensors, or .pth/.pt/.bin for PyTorch's zip format.
        layout: "vggnet" writes the keys as they are; "timm" converts them first (`to_timm`), for timm's
            `vgg16.tv_in1k`-style models.
        metadata: string pairs stored in a safetensors header (ignored by the PyTorch format).

    Returns:
        The written file's SHA-256, 64 lower-case hex digits.

    Raises:
        UsageError: `layout` is neither "vggnet" nor "timm".
    """
    if layout not in ("vggnet", "timm"):
        raise UsageError(f"layout must be 'vggnet' or 'timm', got {layout!r}")
    return write_tensors(to_timm(state) if layout == "timm" else dict(state), path, metadata=metadata)


# --- timm's layout ---------------------------------------------------------------------------------


def layout_of(state: Mapping[str, torch.Tensor]) -> Layout:
    """Tell which layout a state dict's keys are in.

    Args:
        state: a state dict (only its keys are read).

    Returns:
        "timm" when a key starts with timm's `pre_logits.` or `head.fc.`, else "vggnet".
    """
    return "timm" if any(k.startswith(("pre_logits.", "head.fc.")) for k in state) else "vggnet"


def to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a vggnet (torchvision) state dict to timm's VGG layout, bit-exact.

    fc6 becomes `pre_logits.fc1`, a 7x7 convolution (4096, 512, 7, 7); fc7 `pre_logits.fc2`, a 1x1 convolution
    (4096, 4096, 1, 1); fc8 `head.fc`. Other keys (`features.N`) are kept; the tensors are reshaped, not copied.

    Args:
        state: a state dict in vggnet's keys.

    Returns:
        A new dict in timm's keys.
    """
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
    """Convert a timm VGG state dict to vggnet's (torchvision's) layout: the inverse of `to_timm`, bit-exact.

    Args:
        state: a state dict with timm's `pre_logits.fc1`, `pre_logits.fc2` and `head.fc` keys.

    Returns:
        A new dict in vggnet's keys (`classifier.0/3/6`), fc6 and fc7 flattened back to (4096, 25088) and
            (4096, 4096).
    """
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


# --- Keras' layout ------------------------------------------------------------------------------------


def keras_shapes() -> dict[str, tuple[tuple[int | None, ...], ...]]:
    """Give the shapes of the weights each Keras VGG layer holds (kernel, bias), VGG11 to VGG19, from Table 1.

    `read_keras_layers` refuses a dataset of another shape before reading a byte of it.

    Returns:
        Layer name -> (kernel shape, bias shape): `block{b}_conv{c}`: ((3, 3, in, out), (out,)); `fc1`:
            ((7 * 7 * 512, 4096), (4096,)); `fc2`: ((4096, 4096), (4096,)); `predictions`: ((4096, None), (None,)),
            None standing for any number of classes.
    """
    shapes: dict[str, tuple[tuple[int | None, ...], ...]] = {}
    for row in CONFIGS.values():
        convs = _keras_convs(row)
        for name, (cin, cout) in convs.items():
            shapes[name] = ((3, 3, cin, cout), (cout,))  # the same in every row: Table 1's widths by block
        _, width = list(convs.values())[-1]  # what fc1 flattens: the last convolution's 512 channels
    shapes["fc1"] = ((POOLED_SIZE * POOLED_SIZE * width, HIDDEN), (HIDDEN,))
    shapes["fc2"] = ((HIDDEN, HIDDEN), (HIDDEN,))
    shapes["predictions"] = ((HIDDEN, None), (None,))
    return shapes


def _keras_convs(row: tuple[Layer, ...]) -> dict[str, tuple[int, int]]:
    """Keras' names of a row's convolutions (`block{b}_conv{c}`, blocks ended by each pool), with (in, out) channels."""
    convs: dict[str, tuple[int, int]] = {}
    block, conv, channels = 1, 0, IN_CHANNELS
    for v in row:
        if v == "M":
            block, conv = block + 1, 0
            continue
        conv += 1
        convs[f"block{block}_conv{conv}"] = (channels, int(v))
        channels = int(v)
    return convs


def from_keras(
    layers: Mapping[str, list[np.ndarray]], source: str = "the Keras weights"
) -> tuple[str, dict[str, torch.Tensor]]:
    """Turn Keras VGG layers into a builder name and a vggnet state dict.

    The convolutions must be exactly one architecture's (VGG11, 13, 16 or 19 without BatchNorm). A file without
    the top (`notop`) gives only `features.*` keys. conv1_1's input channels are reversed (BGR -> RGB), so the
    model takes RGB: preprocess with `transforms.keras_transforms()`.

    Args:
        layers: layer name -> [kernel, bias] as Keras stores them: `block{b}_conv{c}` and, with the top, `fc1`,
            `fc2` and `predictions` (what `hub.read_keras_layers` returns).
        source: what the layers came from, for the messages (a file name).

    Returns:
        (builder name, e.g. "vgg16"; state dict in vggnet's keys).

    Raises:
        BadCheckpointError: the convolutions match no VGG architecture, or the dense layers are not all three of
            fc1, fc2 and predictions (nor none); nothing is converted.
    """
    convs = [k for k in layers if k.startswith("block") and "_conv" in k]
    arch = next(
        (a for a, (letter, bn) in ARCHS.items() if not bn and set(_keras_convs(CONFIGS[letter])) == set(convs)),
        None,
    )
    if arch is None:
        raise BadCheckpointError(
            f"{source} has {len(convs)} block*_conv* layers ({', '.join(sorted(convs)[:4])}...); a Keras VGG16 has "
            "13 and a VGG19 16 (VGG11 8, VGG13 10), block1_conv1 to block5_conv3 or _conv4; is it a Keras VGG file?"
        )
    row, _ = arch_config(arch)
    indices = [i for i, v in enumerate(_feature_index(row)) if v]
    state: dict[str, torch.Tensor] = {}
    for n, (name, index) in enumerate(zip(_keras_convs(row), indices)):
        kernel, bias = (torch.from_numpy(a.copy()) for a in layers[name])
        weight = kernel.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)
        if n == 0:
            weight = weight.flip(1).contiguous()  # BGR -> RGB: the converted model reads RGB
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = weight, bias
    dense = [k for k in ("fc1", "fc2", "predictions") if k in layers]
    if dense and dense != ["fc1", "fc2", "predictions"]:
        raise BadCheckpointError(
            f"{source} has the dense layers {dense}; a Keras VGG has fc1, fc2 and predictions, or none"
        )
    for name, prefix in zip(dense, (_FC6, _FC7, _FC8)):
        kernel, bias = (torch.from_numpy(a.copy()) for a in layers[name])
        weight = kernel.t()  # (in, out) -> (out, in)
        if prefix == _FC6:
            # Keras flattens the (7, 7, 512) map channels-last, torch the (512, 7, 7) map: reorder fc6's columns.
            weight = weight.reshape(HIDDEN, POOLED_SIZE, POOLED_SIZE, -1).permute(0, 3, 1, 2).reshape(HIDDEN, -1)
        state[prefix + "weight"], state[prefix + "bias"] = weight.contiguous(), bias
    return arch, state


def load_keras(source: str | os.PathLike[str] | VerifiedFile) -> tuple[str, dict[str, torch.Tensor]]:
    """(builder name, vggnet state dict) of a Keras VGG16/VGG19 `.h5` file (full or notop); see `from_keras`.

    The file is read strictly as data (`hub.read_keras_layers`): every dataset must be stored in the
    file, a plain float array of the shape its layer holds (`keras_shapes`), else `BadKerasFileError`.

    Args:
        source: a path, or a `hub.open_verified` file (read through the open file that was checked).

    Returns:
        (builder name, state dict).
    """
    if isinstance(source, VerifiedFile):
        name = str(source.path)
        layers = read_keras_layers(source.file, keras_shapes(), name=name)
    else:
        name = str(source)
        layers = read_keras_layers(source, keras_shapes())
    return from_keras(layers, source=name)


def _feature_index(row: tuple[Layer, ...]) -> list[bool]:
    """For each module of a non-BN `make_layers(row)`, whether it is a convolution."""
    flags: list[bool] = []
    for v in row:
        flags += [False] if v == "M" else [True, False]  # conv, relu
    return flags
