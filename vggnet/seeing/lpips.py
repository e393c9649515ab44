"""`LPIPS`: the learned perceptual image patch similarity of Zhang et al. 2018 on a vggnet VGG16 trunk.

https://arxiv.org/abs/1801.03924. The five taps relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are
unit-normalised along the channels, their squared differences weighted per channel by published
1x1 "linear" layers, averaged over space (or upsampled to the image with `spatial=True`) and summed.
The linear layers are the LPIPS project's own files, fetched like every checkpoint: from a pinned
URL (a fixed commit), hashed while they stream, cached, and loaded with weights_only=True.

With the same trunk weights the distances are those of `lpips.LPIPS(net="vgg")` to float precision;
the official vgg16 weights are the trunk that package loads (through torchvision).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from vggnet.checks import check_choice
from vggnet.errors import BadCheckpointError, UsageError, UsageTypeError
from vggnet.hub import load_weights, read_tensors
from vggnet.models.builders import get_model
from vggnet.models.taps import feature_layers, feature_names
from vggnet.models.vgg import VGG, check_images

__all__ = ["LPIPS", "LPIPS_WEIGHTS", "LinearWeights"]

TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (64, 128, 256, 512, 512)
MIN_SIDE = 16  # relu5_3 comes after four 2x2 max-pools
INPUT_RANGES = ("-1-1", "0-1")
# LPIPS v0.1's input scaling for images in [-1, 1]: (x - SHIFT) / SCALE, per RGB channel. It is
# ImageNet's normalisation re-expressed for [-1, 1] (e.g. (2 * 0.485 - 1) = -0.03, 2 * 0.229 = 0.458).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_COMMIT = "c33f89e9f46522a584cf41d8880eb0afa982708b"  # where lpips/weights/ appeared; unchanged since
_BASE = f"https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/{_COMMIT}/lpips/weights/"

LinearState = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LinearWeights:
    """One version of the published LPIPS linear layers for the VGG trunk: its file, digest and size.

    Attributes:
        version: "0.1" or "0.0".
        url: the file at a pinned commit of the LPIPS repository.
        sha256: its full digest.
        size: its size in bytes.
    """

    version: str
    url: str
    sha256: str
    size: int

    @property
    def file_name(self) -> str:
        """The cache name: the two versions share the URL's last segment (`vgg.pth`), so it is not used."""
        return f"lpips-vgg-v{self.version}-{self.sha256[:8]}.pth"

    def get_state_dict(self, progress: bool = True) -> dict[str, torch.Tensor]:
        """Fetch (or find in the cache), verify and load the file with weights_only=True, on the CPU.

        Args:
            progress: show a progress bar while downloading.

        Returns:
            lpips' keys (`lin0.model.1.weight` ... `lin4.model.1.weight`) -> their (1, C, 1, 1) weights.
        The file loaded is the open file checked against the digest (`hub.load_weights`), never the name again.
        """
        state = load_weights(
            self.url, sha256=self.sha256, size=self.size, file_name=self.file_name, progress=progress,
            map_location="cpu",  # the published files hold CUDA storages
        )  # fmt: skip
        return dict(state)


# v0.0 is the first release, whose network saw the images unscaled (the "normalization bug" lpips keeps).
LPIPS_WEIGHTS: Mapping[str, LinearWeights] = MappingProxyType(
    {
        "0.1": LinearWeights(
            "0.1", _BASE + "v0.1/vgg.pth", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", 7289
        ),
        "0.0": LinearWeights(
            "0.0", _BASE + "v0.0/vgg.pth", "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c", 6735
        ),
    }
)


class LPIPS(nn.Module):
    """lpips(x, y): the LPIPS distance of each pair of images, (N,), or an (N, 1, H, W) map with `spatial=True`.

    The network is frozen and always in eval mode; gradients flow to both inputs, so it works as a
    loss (`lpips(output, target).mean()`). lpips' `LPIPS` returns (N, 1, 1, 1) where this returns (N,).

    Args:
        net: a builder name, loaded with its DEFAULT (official) weights, or a VGG of your own; it needs the
            five taps relu1_2 ... relu5_3 with 64, 128, 256, 512, 512 channels (vgg16, vgg16_bn, vgg19,
            vgg19_bn). The published linear layers were fitted on the official vgg16. Its convolutions are
            copied; the model itself is left untouched.
        version: "0.1" (current) or "0.0" (the first release, which fed the images unscaled).
        spatial: return a map (N, 1, H, W) of where the images differ instead of one distance per pair.
        input_range: "-1-1" (LPIPS' own convention) or "0-1" (mapped to [-1, 1] first, lpips'
            `normalize=True`).
        lin_weights: the linear layers from a file path or a state dict (lpips' keys `lin0.model.1.weight`
            ... `lin4.model.1.weight`) instead of the pinned download.
        progress: show a progress bar while downloading.

    Raises:
        UsageError: an unknown version or input range, a VGG without the five taps, or linear weights
            that lack a layer.
        BadCheckpointError: linear weights of the wrong shape, or a file that holds no state dict.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        net: VGG | str = "vgg16",
        version: Literal["0.1", "0.0"] = "0.1",
        spatial: bool = False,
        input_range: Literal["-1-1", "0-1"] = "-1-1",
        lin_weights: str | os.PathLike[str] | LinearState | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        check_choice("version", version, LPIPS_WEIGHTS, quote=True)
        check_choice("input_range", input_range, INPUT_RANGES, quote=True)
        model = get_model(net, weights="DEFAULT") if isinstance(net, str) else net
        self.version = version
        self.spatial = spatial
        self.input_range = input_range
        self.features, self._taps = _trunk(model)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        if lin_weights is None:
            lin_weights = LPIPS_WEIGHTS[version].get_state_dict(progress=progress)
        elif not isinstance(lin_weights, Mapping):
            lin_weights = _load(lin_weights)
        self._load_lins(lin_weights)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, -1, 1, 1), persistent=False)
        super().requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode (the argument is ignored)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> LPIPS:
        """Stays frozen: the metric is fixed (the argument is ignored)."""
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The LPIPS distance of each pair (x[i], y[i]).

        Args:
            x: a float batch (N, 3, H, W) in `input_range`, at least 16x16.
            y: a batch of the same shape.

        Returns:
            (N,) distances, or (N, 1, H, W) maps with `spatial=True`.

        Raises:
            UsageError: the shapes differ, or a batch is not float images of at least 16x16 pixels.
        """
        self._check(x, "x")
        self._check(y, "y")
        if x.shape != y.shape:
            raise UsageError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.input_range == "0-1":
            x, y = 2 * x - 1, 2 * y - 1
        if self.version == "0.1":
            x, y = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total: torch.Tensor | None = None
        for lin, a, b in zip(self.lins, self.taps(x), self.taps(y)):
            diff = lin((_unit(a) - _unit(b)) ** 2)  # (N, C, h, w) -> (N, 1, h, w)
            if self.spatial:
                diff = F.interpolate(diff, size=x.shape[2:], mode="bilinear", align_corners=False)
            else:
                diff = diff.mean(dim=(2, 3), keepdim=True)
            total = diff if total is None else total + diff
        assert total is not None  # five taps
        return total if self.spatial else total.flatten()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1_2 ... relu5_3 of an already scaled batch.

        Args:
            x: a batch as the trunk reads it (after the version's scaling).

        Returns:
            The five taps' outputs, in order.
        """
        outs = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self._taps:
                outs.append(x)
        return outs

    def _check(self, x: torch.Tensor, what: str) -> None:
        check_images(x, 3, "LPIPS")
        if not x.dtype.is_floating_point:
            raise UsageError(
                f"LPIPS expects floating-point images in input_range {self.input_range!r}, got {what} of {x.dtype}; "
                "convert uint8 images with x.float() / 255 and input_range='0-1'"
            )
        if min(x.shape[2:]) < MIN_SIDE:
            raise UsageError(
                f"LPIPS needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels (relu5_3 follows four 2x2 max-pools), "
                f"got {what} of {x.shape[2]}x{x.shape[3]}"
            )

    def _load_lins(self, state: LinearState) -> None:
        expected = [f"lin{k}.model.1.weight" for k in range(len(CHANNELS))]
        missing = sorted(set(expected) - set(state))
        if missing:
            raise UsageError(
                f"the LPIPS linear weights lack {missing} (found {sorted(state)}); pass the lpips project's "
                "vgg.pth (lpips/weights/v0.1/vgg.pth) or leave lin_weights=None to download it"
            )
        with torch.no_grad():
            for k, key in enumerate(expected):
                weight = state[key]
                shape = (1, CHANNELS[k], 1, 1)
                if tuple(weight.shape) != shape:
                    raise BadCheckpointError(f"{key} has shape {tuple(weight.shape)}, expected {shape}")
                cast(nn.Conv2d, self.lins[k]).weight.copy_(weight)

    def extra_repr(self) -> str:
        return f"version={self.version!r}, spatial={self.spatial}, input_range={self.input_range!r}"


def _trunk(model: VGG) -> tuple[nn.Sequential, frozenset[int]]:
    """A copy of `features` up to relu5_3 and the indices of the five taps in it."""
    if not isinstance(model, VGG):
        raise UsageTypeError(f"net must be a VGG or a builder name such as 'vgg16', got {type(model).__name__}")
    layers = list(feature_layers(model.features))
    names = feature_names(model.features)
    lacking = [t for t in TAPS if t not in names]
    if lacking:
        raise UsageError(
            f"LPIPS reads {', '.join(TAPS)}; this VGG has no {', '.join(lacking)}. "
            "Use vgg16 (the trunk LPIPS was fitted on), vgg16_bn, vgg19 or vgg19_bn"
        )
    indices = [names.index(t) for t in TAPS]
    widths = [next(m.out_channels for m in reversed(layers[: i + 1]) if isinstance(m, nn.Conv2d)) for i in indices]
    if tuple(widths) != CHANNELS:
        raise UsageError(
            f"LPIPS' linear layers expect {CHANNELS} channels at {', '.join(TAPS)}, this VGG has {tuple(widths)}"
        )
    return copy.deepcopy(nn.Sequential(*layers[: indices[-1] + 1])), frozenset(indices)


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each pixel's feature vector divided by its length (+ eps), as LPIPS normalises."""
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def _load(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    # The published files are in torch's legacy format with CUDA storages: map them to the CPU. One open file,
    # read weights-only; any problem is one line naming the file (never torch's advice to drop weights_only).
    return read_tensors(path, "cpu")
