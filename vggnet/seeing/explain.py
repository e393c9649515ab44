"""Where the model looked: class-activation maps (Grad-CAM) over the image, with the top classes named.

Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) weights a layer's feature maps by
the spatial mean of the class score's gradient and keeps the positive part. The computation is
Captum's `LayerGradCam` (https://captum.ai), PyTorch's own attribution library, installed with the
`explain` extra (`pip install 'vggnet[explain]'`); it is imported only when a map is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vggnet.checks import check_choice, check_int
from vggnet.errors import MissingDependency, UsageError
from vggnet.models.taps import feature_layers, feature_names
from vggnet.models.vgg import VGG, check_images
from vggnet.models.weights import IMAGENET_CATEGORIES

__all__ = ["METHODS", "Explanation", "Prediction", "explain", "top_classes"]

METHODS = ("gradcam",)


@dataclass(frozen=True)
class Prediction:
    """One class of the model's answer: its index, name and softmax probability.

    Attributes:
        index: the class index (fc8's output).
        name: the class name.
        probability: its softmax probability, 0-1.
    """

    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    """The maps of a batch and what they explain.

    Attributes:
        layer: the layer the maps were taken at.
        method: "gradcam".
        cam: (N, h, w) Grad-CAM at the layer's resolution, as Captum returns it (ReLU applied).
        heatmap: (N, H, W) the same, bilinearly upsampled to the images and divided by each map's maximum,
            so it lies in [0, 1] (all zeros where the class has no positive evidence at that layer).
        explained: the class each map explains, with its probability.
        top: each image's most probable classes, best first.
    """

    layer: str
    method: str
    cam: torch.Tensor
    heatmap: torch.Tensor
    explained: list[Prediction]
    top: list[list[Prediction]]

    @property
    def targets(self) -> list[int]:
        """The class index each map explains."""
        return [p.index for p in self.explained]


def explain(
    model: VGG,
    images: torch.Tensor,
    layer: str | None = None,
    target: int | None = None,
    topk: int = 5,
    method: str = "gradcam",
    categories: Sequence[str] | None = None,
) -> Explanation:
    """Grad-CAM of `target` (default: each image's top class) at `layer` for preprocessed `images` (N, 3, H, W).

    The model runs in eval mode for the call and is left in the mode it had.

    Args:
        model: a vggnet VGG.
        images: a preprocessed image (C, H, W) or batch (N, C, H, W).
        layer: any named layer of `features` (conv1_1 ... pool5, see `model.layer_names()`); default the
            last convolution (conv5_3 in vgg16), the usual choice.
        target: the class to explain in every image; default each image's top class.
        topk: how many of each image's top classes to name.
        method: "gradcam" (the only one so far).
        categories: the class names; default ImageNet's for a 1000-class model, else "class K".

    Returns:
        The maps and the classes they explain.

    Raises:
        UsageError: an unknown method or layer, a `target` out of range, or `categories` of the wrong length.
        MissingDependency: Captum is not installed (`pip install "vggnet[explain]"`).
    """
    check_choice("method", method, METHODS, quote=True)
    check_int("topk", topk)
    captum = _captum()
    x = images.unsqueeze(0) if images.dim() == 3 else images
    check_images(x, model.in_channels, "explain")
    names = category_names(model, categories)
    if target is not None and not 0 <= target < len(names):
        raise UsageError(f"target must be a class index from 0 to {len(names) - 1}, got {target}")
    layer = layer or last_conv(model)
    module = layer_module(model, layer)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1)
        top = top_classes(probs, topk, names)
        targets = [row[0].index for row in top] if target is None else [target] * x.shape[0]
        explained = [Prediction(t, names[t], float(p[t])) for t, p in zip(targets, probs)]
        with torch.enable_grad():
            cam = captum.LayerGradCam(model, module).attribute(x, target=targets, relu_attributions=True)
    finally:
        model.train(was_training)
    cam = cam.detach()  # (N, 1, h, w)
    upsampled = captum.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    peak = upsampled.amax(dim=(2, 3), keepdim=True)
    heatmap = torch.where(peak > 0, upsampled / peak.clamp_min(torch.finfo(peak.dtype).tiny), 0.0)
    return Explanation(layer, method, cam[:, 0], heatmap[:, 0], explained, top)


def top_classes(probs: torch.Tensor, k: int, names: Sequence[str]) -> list[list[Prediction]]:
    """The `k` most probable classes of each row of `probs` (N, classes), named.

    Args:
        probs: (N, classes) probabilities.
        k: how many classes per row (at most the number of classes).
        names: the class names, in index order.

    Returns:
        One list per row, best first.
    """
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [Prediction(int(i), names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
        for row_p, row_i in zip(values, indices)
    ]


def category_names(model: VGG, categories: Sequence[str] | None) -> Sequence[str]:
    """`categories`, checked against fc8; ImageNet's for a 1000-class model; else "class 0", "class 1", ..."""
    n = model.num_classes
    if categories is None:
        return IMAGENET_CATEGORIES if n == len(IMAGENET_CATEGORIES) else [f"class {i}" for i in range(n)]
    if len(categories) != n:
        raise UsageError(f"categories has {len(categories)} names for a model with {n} classes (fc8's outputs)")
    return categories


def layer_module(model: VGG, layer: str) -> nn.Module:
    """The module of `features` that produces the named layer (conv1_1 ... pool5)."""
    layers = list(feature_layers(model.features))
    names = feature_names(model.features)
    if layer not in names:
        raise UsageError(
            f"unknown layer {layer!r}: maps need a layer of `features` with a spatial output; valid: {', '.join(names)}"
        )
    return layers[names.index(layer)]


def last_conv(model: VGG, block: int | None = None) -> str:
    """The name of the last convolution of `features` (conv5_2, conv5_3 or conv5_4 by depth), or of one block."""
    names = feature_names(model.features)
    prefix = "conv" if block is None else f"conv{block}_"
    convs = [name for name in names if name.startswith(prefix)]
    if not convs:
        raise UsageError(f"this VGG has no convolution in block {block}; its blocks are numbered 1 to 5")
    return convs[-1]


def _captum() -> Any:
    try:
        return importlib.import_module("captum.attr")  # an optional extra, untyped: imported on first use
    except ImportError as err:
        raise MissingDependency("class-activation maps need Captum: pip install 'vggnet[explain]'") from err
