"""`PerceptualLoss`: distances between VGG feature maps (content) and their Gram matrices (style).

Johnson et al. 2016 (https://arxiv.org/abs/1603.08155) for the content terms, Gatys et al. 2015
(https://arxiv.org/abs/1508.06576) for the Gram-matrix style terms and the average-pooled network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vggnet.checks import check_choice
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.errors import UsageError
from vggnet.models.builders import get_model
from vggnet.models.taps import feature_layers, feature_names, layer_list, run_taps
from vggnet.models.vgg import VGG, check_images
from vggnet.models.weights import WEIGHTS_ENUMS

__all__ = ["PerceptualLoss", "gram_matrix"]

InputRange = Literal["0-1", "-1-1", "normalized"]
INPUT_RANGES = ("0-1", "-1-1", "normalized")
DISTANCES = ("l1", "l2")
POOLS = ("max", "avg")


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrix divided by C*H*W, always in float32.

    Autocast is switched off inside: in bfloat16 or float16 the sums over H*W lose most of their
    digits (or overflow), which is the usual reason style losses go wrong under mixed precision.

    Args:
        features: a batch of feature maps (N, C, H, W), any float dtype.

    Returns:
        (N, C, C) float32.
    """
    n, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(n, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


class PerceptualLoss(nn.Module):
    """loss(input, target): weighted content distances on VGG taps plus optional Gram-matrix style terms.

    The network is frozen (requires_grad=False) and always in eval mode, whatever `train()` is
    called with. Gradients flow to `input`; `target` is treated as a constant. `input` and `target`
    are float batches (N, C, H, W) with the model's channel count; anything else is refused.

    Args:
        model: a VGG (its conv part is copied, the model itself is left untouched) or a builder name such
            as "vgg16", which loads that builder's DEFAULT weights and uses their mean and std.
        layers: content taps by name (see `VGG.layer_names()`; only the conv part, conv1_1 ... pool5); a
            single string is one name.
        weights: one factor per content tap (default 1 each).
        distance: "l1" (mean absolute) or "l2" (mean squared) between feature maps.
        style_layers: taps whose Gram matrices are compared by mean squared error, computed in float32
            even under autocast.
        style_weights: one factor per style tap (default 1 each).
        input_range: what the images hold: "0-1", "-1-1" (both are mapped to 0-1 and normalized with
            `mean`/`std`) or "normalized" (used as given).
        pool: "avg" replaces the max-pools by 2x2 average pools, as Gatys et al. do for style.
        mean: one value per input channel; default the weights' (a builder name) or ImageNet's.
        std: one value per input channel; default the weights' (a builder name) or ImageNet's.

    Raises:
        UsageError: an unknown distance, input range, pool or layer, no layer at all, factors or mean/std
            of the wrong length.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: VGG | str = "vgg16",
        layers: str | Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        weights: Sequence[float] | None = None,
        distance: Literal["l1", "l2"] = "l1",
        style_layers: str | Sequence[str] | None = None,
        style_weights: Sequence[float] | None = None,
        input_range: InputRange = "0-1",
        pool: Literal["max", "avg"] = "max",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_choice("distance", distance, DISTANCES, quote=True)
        check_choice("input_range", input_range, INPUT_RANGES, quote=True)
        check_choice("pool", pool, POOLS, quote=True)
        if isinstance(model, str):
            model, mean, std = _pretrained(model, mean, std)
        self.layers = layer_list(layers)
        self.style_layers = layer_list(style_layers or ())
        self.weights = _factors("weights", weights, self.layers)
        self.style_weights = _factors("style_weights", style_weights, self.style_layers)
        if not self.layers and not self.style_layers:
            raise UsageError("give at least one content layer (layers=...) or style layer (style_layers=...)")
        self.distance = distance
        self.input_range = input_range
        self.features, self._names = _truncated(model, self.layers + self.style_layers, pool)
        self.in_channels = model.in_channels
        mean, std = _normalization(model.in_channels, mean, std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stays in eval mode: BatchNorm keeps its running statistics (the argument is ignored)."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> PerceptualLoss:
        """Stays frozen: the network is a fixed measuring device (the argument is ignored)."""
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse a batch the network cannot read as images, naming the problem.

        Args:
            x: a batch (N, C, H, W) of float images in `input_range`.

        Raises:
            UsageError: (a ValueError) not 4-D, another channel count, under 32 px, or not floating point.
        """
        check_images(x, self.in_channels, "PerceptualLoss")
        if not x.dtype.is_floating_point:
            raise UsageError(
                f"PerceptualLoss expects floating-point images in input_range {self.input_range!r}, got {x.dtype}; "
                "convert uint8 images with x.float() / 255"
            )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in `input_range` to what the network was trained on.

        Args:
            x: a batch in `input_range`.

        Returns:
            The batch normalized with `mean` and `std` (as it is for "normalized").
        """
        if self.input_range == "normalized":
            return x
        if self.input_range == "-1-1":
            x = (x + 1) / 2
        return (x - self.mean) / self.std

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The content and style taps of `x` (given in `input_range`).

        Args:
            x: a batch of float images (N, C, H, W).

        Returns:
            Tap name -> its output, for every content and style layer.
        """
        self.check_input(x)
        steps = [(name, [m]) for name, m in zip(self._names, self.features)]
        wanted = list(dict.fromkeys(self.layers + self.style_layers))
        return run_taps(steps, self.normalize(x), wanted)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of `input` against `target`.

        Args:
            input: the images being optimised (N, C, H, W), in `input_range`; gradients flow to them.
            target: the reference images, the same shape; treated as a constant.

        Returns:
            A float32 scalar: the weighted content distances plus the weighted style terms.

        Raises:
            UsageError: the shapes differ, or a batch is not images the network can read.
        """
        if input.shape != target.shape:
            raise UsageError(
                f"input and target must have the same shape, got {tuple(input.shape)} and {tuple(target.shape)}"
            )
        ours = self.taps(input)
        with torch.no_grad():
            theirs = self.taps(target)
        distance = F.l1_loss if self.distance == "l1" else F.mse_loss
        loss = input.new_zeros((), dtype=torch.float32)
        for name, weight in zip(self.layers, self.weights):
            loss = loss + weight * distance(ours[name].float(), theirs[name].float())
        for name, weight in zip(self.style_layers, self.style_weights):
            loss = loss + weight * F.mse_loss(gram_matrix(ours[name]), gram_matrix(theirs[name]))
        return loss

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, weights={self.weights}, distance={self.distance!r}, "
            f"style_layers={self.style_layers}, style_weights={self.style_weights}, input_range={self.input_range!r}"
        )


def _pretrained(
    arch: str, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[VGG, Sequence[float], Sequence[float]]:
    """A builder's DEFAULT weights and, unless given, the mean and std of that record."""
    model = get_model(arch, weights="DEFAULT")  # an unknown name raises the registry's ValueError
    record = WEIGHTS_ENUMS[arch.lower()].from_name("DEFAULT").value
    return model, record.mean if mean is None else mean, record.std if std is None else std


def _truncated(model: VGG, taps: list[str], pool: str) -> tuple[nn.Sequential, list[str]]:
    """A frozen copy of `model`'s conv part up to the last of `taps` (max-pools made 2x2 average pools for
    `pool` "avg"), and its layers' names."""
    names = feature_names(model.features)
    unknown = [name for name in taps if name not in names]
    if unknown:
        raise UsageError(f"unknown or non-convolutional layers {unknown}; valid: {', '.join(names)}")
    last = max(names.index(name) for name in taps)
    features = copy.deepcopy(feature_layers(model.features)[: last + 1])
    if pool == "avg":
        for i, m in enumerate(features):
            if isinstance(m, nn.MaxPool2d):
                features[i] = nn.AvgPool2d(kernel_size=2, stride=2)
    features.requires_grad_(False)
    return features, names[: last + 1]


def _normalization(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`mean` and `std` checked to have one value per channel; for None, ImageNet's (averaged over RGB for another
    channel count, as `finetune` does)."""
    mean = tuple(mean) if mean is not None else _per_channel(IMAGENET_MEAN, channels)
    std = tuple(std) if std is not None else _per_channel(IMAGENET_STD, channels)
    for what, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise UsageError(
                f"{what} needs one value per input channel of the model ({channels}), got {len(values)}: {list(values)}"
            )
    return mean, std


def _per_channel(rgb: tuple[float, ...], channels: int) -> tuple[float, ...]:
    return rgb if channels == len(rgb) else (sum(rgb) / len(rgb),) * channels


def _factors(what: str, factors: Sequence[float] | None, layers: Sequence[str]) -> list[float]:
    if factors is None:
        return [1.0] * len(layers)
    if len(factors) != len(layers):
        raise UsageError(f"{what} needs one factor per layer: {len(layers)} layers, {len(factors)} factors")
    return [float(f) for f in factors]
