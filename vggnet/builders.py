"""The eight builders and the model registry.

Shared arguments of every builder (documented once here):

- `weights`: None (random initialisation), a member of the builder's enum, its name as a string
  ("DEFAULT", "IMAGENET1K_V1", "VGG16_Weights.IMAGENET1K_V1"), a user's own `Weights` record, a
  checkpoint file or a URL: anything `checkpoint.load` takes (the rules are in checkpoint.py).
  With weights the model is built on the meta device and the checkpoint's tensors are assigned,
  so no time is spent on a random initialisation that would be thrown away.
- `progress`: show a progress bar while downloading.
- `device`: where the parameters are created ("cpu", "cuda", "cuda:1", "meta"); a checkpoint is
  loaded straight onto it. A device this machine lacks is refused before anything is fetched.
- `num_classes`: with weights whose last layer has another size, every other layer is loaded and
  fc8 is freshly initialised (logged at INFO).
- `in_chans`: input channels (default 3). With weights, a 3-channel first convolution is adapted by
  `model.adapt_input_conv` (1 channel: the sum over RGB; see there for 2 and N > 3).
- other keyword arguments go to `VGG` (`dropout`, `init_weights`).
- `pretrained=True/False`: deprecated spelling of `weights="IMAGENET1K_V1"` / `weights=None`.

Every argument is checked before a checkpoint is fetched, so a typo costs no download.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .checkpoint import WeightsSource, arch_of_state, load
from .checks import check_int
from .config import IN_CHANNELS, check_arch
from .model import NUM_CLASSES_MEANS, VGG
from .weights import WEIGHTS_ENUMS, WeightsEnum

__all__ = [
    "BUILDERS",
    "arch_of_state",  # moved to checkpoint.py; importable here as before
    "get_model",
    "get_model_weights",
    "list_models",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]


def _legacy_pretrained(arch: str, weights: WeightsSource, kwargs: dict[str, Any]) -> WeightsSource:
    if "pretrained" not in kwargs:
        return weights
    pretrained = kwargs.pop("pretrained")
    if weights is not None:
        raise ValueError("pass either weights= or the deprecated pretrained=, not both")
    replacement = "IMAGENET1K_V1" if pretrained else None
    warnings.warn(
        f"pretrained={pretrained} is deprecated; use weights={replacement!r} "
        f"(or weights={WEIGHTS_ENUMS[arch].__name__}.DEFAULT)",
        DeprecationWarning,
        stacklevel=4,
    )
    return replacement


# The keyword arguments a builder takes besides weights and progress.
_ARGUMENTS = ("device", "num_classes", "in_chans", "dropout", "init_weights")


def _check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse a bad argument before any checkpoint is fetched: a typo must not cost a 528 MB download."""
    unknown = sorted(set(kwargs) - set(_ARGUMENTS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the builders take weights, progress, {', '.join(_ARGUMENTS)}"
        )
    check_int("num_classes", kwargs.get("num_classes", 1), what=NUM_CLASSES_MEANS)
    check_int("in_chans", kwargs.get("in_chans", IN_CHANNELS))
    dropout = kwargs.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be a probability between 0 and 1, got {dropout!r}")


def _vgg(arch: str, weights: WeightsSource, progress: bool, kwargs: dict[str, Any]) -> VGG:
    weights = _legacy_pretrained(arch, weights, kwargs)
    _check_arguments(kwargs)
    return load(weights, arch=arch, progress=progress, **kwargs).model


# fmt: off
def vgg11(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-11 (configuration A), 8 convolutions; see the module docstring for the arguments."""
    return _vgg("vgg11", weights, progress, kwargs)


def vgg11_bn(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg("vgg11_bn", weights, progress, kwargs)


def vgg13(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-13 (configuration B), 10 convolutions."""
    return _vgg("vgg13", weights, progress, kwargs)


def vgg13_bn(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg("vgg13_bn", weights, progress, kwargs)


def vgg16(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-16 (configuration D), 13 convolutions; also takes VGG16_Weights.IMAGENET1K_FEATURES."""
    return _vgg("vgg16", weights, progress, kwargs)


def vgg16_bn(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg("vgg16_bn", weights, progress, kwargs)


def vgg19(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-19 (configuration E), 16 convolutions."""
    return _vgg("vgg19", weights, progress, kwargs)


def vgg19_bn(*, weights: WeightsSource = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg("vgg19_bn", weights, progress, kwargs)
# fmt: on

# builder name -> builder, in the paper's order: the registry every list of names comes from
BUILDERS: Mapping[str, Callable[..., VGG]] = MappingProxyType(
    {f.__name__: f for f in (vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)}
)


def list_models() -> list[str]:
    """The builder names, in the paper's order."""
    return list(BUILDERS)


def get_model(name: str, **config: Any) -> VGG:
    """Build a model by name: get_model("vgg16", weights="DEFAULT")."""
    return BUILDERS[check_arch(name)](**config)


def get_model_weights(name: str | Callable[..., VGG]) -> type[WeightsEnum]:
    """The weights enum of a builder, given its name or the builder itself."""
    if callable(name):
        name = getattr(name, "__name__", "")
    return WEIGHTS_ENUMS[check_arch(name)]
