"""What torchvision's and timm's tools read off a model: FX node names for the paper's layer names,
and timm's `pretrained_cfg` dict (issue 12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.models.taps import HEAD_NAMES, feature_names

__all__ = ["node_names", "pretrained_cfg"]


class Preprocessing(Protocol):
    """What `pretrained_cfg` reads off a weights record (`vggnet.Weights` has these fields)."""

    @property
    def url(self) -> str: ...
    @property
    def crop_size(self) -> int: ...
    @property
    def resize_size(self) -> int: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...
    @property
    def interpolation(self) -> str: ...


def node_names(arch: str) -> dict[str, str]:
    """Paper name -> torchvision node name for `arch`: {"conv1_1": "features.0", ..., "fc8": "classifier.6"}.

    These are the names `torchvision.models.feature_extraction.create_feature_extractor` takes and
    the state-dict prefixes; they hold for torchvision's own VGG too. Unknown arch: ValueError.
    """
    names = {name: f"features.{i}" for i, name in enumerate(feature_names(arch))}
    names[HEAD_NAMES[0]] = "avgpool"
    return names | {name: f"classifier.{i}" for i, name in enumerate(HEAD_NAMES[1:])}


def pretrained_cfg(record: Preprocessing | None, num_classes: int = 1000) -> dict[str, Any]:
    """timm's `pretrained_cfg` keys describing `record`'s weights (None: torchvision's ImageNet preset).

    As in timm it describes the weights, not later changes: `crop_pct` is crop / resize (224 / 256 =
    0.875), `input_size` is (channels of `mean`, crop, crop), `num_classes` the head's outputs.
    """
    crop, resize = (record.crop_size, record.resize_size) if record is not None else (224, 256)
    mean, std = (record.mean, record.std) if record is not None else (IMAGENET_MEAN, IMAGENET_STD)
    return {
        "url": record.url if record is not None else "",
        "num_classes": num_classes,
        "input_size": (len(mean), crop, crop),
        "pool_size": (crop // 32, crop // 32),
        "crop_pct": crop / resize,
        "crop_mode": "center",
        "fixed_input_size": False,  # any side of at least 32 px (the adaptive pool)
        "interpolation": record.interpolation if record is not None else "bilinear",
        "mean": tuple(mean),
        "std": tuple(std),
        "first_conv": "features.0",
        "classifier": "classifier.6",
        "license": "bsd-3-clause",
    }
