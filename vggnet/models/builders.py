"""The eight builders and the model registry.

Shared arguments of every builder (documented once here):

- `weights`: None (random initialisation), a member of the builder's enum, its name as a string
  ("DEFAULT", "IMAGENET1K_V1", "VGG16_Weights.IMAGENET1K_V1"), a user's own `Weights` record, a
  checkpoint file or a URL: anything `checkpoint.load` takes (the rules are in sources.py).
  With weights the model is built on the meta device and the checkpoint's tensors are assigned,
  so no time is spent on a random initialisation that would be thrown away.
- `progress`: show a progress bar while downloading.
- `device`: where the parameters are created ("cpu", "cuda", "cuda:1", "meta"); a checkpoint is
  loaded straight onto it. A device this machine lacks is refused before anything is fetched.
- `num_classes`: with weights whose last layer has another size, every other layer is loaded and
  fc8 is freshly initialised (logged at INFO).
- `in_chans`: input channels (default 3). With weights, a 3-channel first convolution is adapted by
  `model.adapt_input_conv` (1 channel: the sum over RGB; see there for 2 and N > 3).
- `head`: "vgg" (fc6-fc8, the default), "gap" (global average pool + one Linear(512, num_classes):
  thousands of parameters instead of 123M, for small data or small images; with weights, `features`
  is loaded and the new Linear freshly initialised) or "fc7" (the vgg head; the name `finetune` uses
  for a linear probe on fc7 features).
- other keyword arguments go to `VGG` (`dropout`, `init_weights`).
- `weights` also takes torchvision's own members (`torchvision.models.VGG16_Weights.DEFAULT`),
  matched by URL to vggnet's records.
- torchvision's legacy calls work as in torchvision, each with its UserWarning: `pretrained=True/False`
  (`weights=<enum>.IMAGENET1K_V1` / `weights=None`), `vgg16(True)` and `weights=True` (the same), and
  `weights` and `progress` passed positionally.
- `features_only=True` (timm's option): a `model.VGGFeatures` returning the six stage outputs of
  `VGG.feature_info` instead of logits; `out_indices` picks some of them.

Every argument is checked before a checkpoint is fetched, so a typo costs no download.
"""

# No `from __future__ import annotations` here: the builders' annotations must be objects at run time,
# for tools that read them as torchvision's `get_model_weights` does (the enum inside `weights`' union).
import os
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

from vggnet.checks import check_choice, check_float, check_int
from vggnet.errors import UsageError, UsageTypeError
from vggnet.models.checkpoint import load
from vggnet.models.config import HEADS, IN_CHANNELS, check_arch
from vggnet.models.interop import pretrained_cfg
from vggnet.models.sources import WeightsSource
from vggnet.models.vgg import NUM_CLASSES_MEANS, VGG, VGGFeatures, stage_indices
from vggnet.models.weights import (
    WEIGHTS_ENUMS,
    VGG11_BN_Weights,
    VGG11_Weights,
    VGG13_BN_Weights,
    VGG13_Weights,
    VGG16_BN_Weights,
    VGG16_Weights,
    VGG19_BN_Weights,
    VGG19_Weights,
    Weights,
    WeightsEnum,
)

__all__ = [
    "BUILDERS",
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


_SINCE = "since torchvision 0.13"


def _legacy_pretrained(
    arch: str, positional: tuple[object, ...], weights: object, progress: bool, kwargs: dict[str, Any]
) -> tuple[WeightsSource, bool]:
    """(weights, progress) for torchvision's legacy calls, warning as torchvision does (UserWarning).

    `vgg16(True)`, `vgg16(weights=True)` and `pretrained=True` mean IMAGENET1K_V1; False means None.
    Positional arguments are `weights` then `progress`, as torchvision's keyword-only shim reads them.
    """
    if positional:
        if len(positional) > 2:
            raise UsageTypeError(
                f"{arch}() takes at most 2 positional arguments (weights, progress), got {len(positional)}; "
                "pass the others by keyword"
            )
        if weights is not None:
            raise UsageTypeError(f"{arch}() got weights both positionally and as weights=; pass it once, by keyword")
        names = " and ".join(("'weights'", "'progress'")[: len(positional)])
        warnings.warn(
            f"Using {names} as positional parameter(s) is deprecated {_SINCE} and may be removed in the "
            f"future. Please use keyword parameter(s) instead.",
            UserWarning,
            stacklevel=3,
        )
        weights = positional[0]
        if len(positional) == 2:
            progress = bool(positional[1])
    legacy = isinstance(weights, bool)  # vgg16(True) or weights=True: torchvision's positional pretrained
    if "pretrained" in kwargs:
        if weights is not None:
            raise UsageError(f"pass either weights= or the deprecated pretrained= to {arch}(), not both")
        weights = kwargs.pop("pretrained")
        legacy = True
        warnings.warn(
            f"The parameter 'pretrained' is deprecated {_SINCE} and may be removed in the future, "
            "please use 'weights' instead.",
            UserWarning,
            stacklevel=3,
        )
    if not legacy:
        return cast(WeightsSource, weights), progress  # resolve_weights checks what it really is
    enum = WEIGHTS_ENUMS[arch]
    chosen = enum["IMAGENET1K_V1"] if weights else None
    message = (
        f"Arguments other than a weight enum, its name, a vggnet.Weights record or `None` for 'weights' are "
        f"deprecated {_SINCE} and may be removed in the future. The current behavior is equivalent to "
        f"passing `weights={chosen}`."
    )
    if chosen is not None:
        message += f" You can also use `weights={enum.__name__}.DEFAULT` to get the most up-to-date weights."
    warnings.warn(message, UserWarning, stacklevel=3)
    return chosen, progress


# The keyword arguments a builder takes besides weights and progress.
_ARGUMENTS = ("device", "num_classes", "in_chans", "dropout", "init_weights", "features_only", "head")


def _check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse a bad argument before any checkpoint is fetched: a typo must not cost a 528 MB download."""
    unknown = sorted(set(kwargs) - set(_ARGUMENTS))
    if unknown:
        raise UsageTypeError(
            f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the builders take weights, progress, {', '.join(_ARGUMENTS)}"
        )
    check_int("num_classes", kwargs.get("num_classes", 1), least=0, what=NUM_CLASSES_MEANS)
    check_int("in_chans", kwargs.get("in_chans", IN_CHANNELS))
    check_choice("head", kwargs.get("head", "vgg"), HEADS)
    check_float("dropout", kwargs.get("dropout", 0.0), least=0.0, most=1.0, expected="a probability between 0 and 1")


def _vgg(arch: str, weights: WeightsSource, progress: bool, kwargs: dict[str, Any]) -> VGG:
    if kwargs.pop("features_only", False):  # timm's option (issue 12); like timm's, the builders still say VGG
        out_indices = stage_indices(kwargs.pop("out_indices", None))  # checked before any download
        return cast(VGG, VGGFeatures(_vgg(arch, weights, progress, kwargs), out_indices))
    _check_arguments(kwargs)
    loaded = load(weights, arch=arch, progress=progress, **kwargs)
    if loaded.source.kind not in ("file", "url"):  # a file's preset and class names are its own (set by `load`)
        record = loaded.source.record or WEIGHTS_ENUMS[arch].from_name("DEFAULT").value
        loaded.model.pretrained_cfg = pretrained_cfg(record, loaded.model.num_classes)
    return loaded.model


# What a builder's `weights` takes besides its own enum's members (a union, so that the annotation reads
# "VGG16_Weights | str | PathLike | Weights | None" to tools that look for the enum in it).
_OtherSource = str | os.PathLike[str] | Weights | None


# fmt: off
def vgg11(
    *positional: object, weights: VGG11_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-11 (configuration A), 8 convolutions; see the module docstring for the arguments."""
    return _vgg("vgg11", *_legacy_pretrained("vgg11", positional, weights, progress, kwargs), kwargs)


def vgg11_bn(
    *positional: object, weights: VGG11_BN_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg("vgg11_bn", *_legacy_pretrained("vgg11_bn", positional, weights, progress, kwargs), kwargs)


def vgg13(
    *positional: object, weights: VGG13_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-13 (configuration B), 10 convolutions."""
    return _vgg("vgg13", *_legacy_pretrained("vgg13", positional, weights, progress, kwargs), kwargs)


def vgg13_bn(
    *positional: object, weights: VGG13_BN_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg("vgg13_bn", *_legacy_pretrained("vgg13_bn", positional, weights, progress, kwargs), kwargs)


def vgg16(
    *positional: object, weights: VGG16_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-16 (configuration D), 13 convolutions; also takes VGG16_Weights.IMAGENET1K_FEATURES."""
    return _vgg("vgg16", *_legacy_pretrained("vgg16", positional, weights, progress, kwargs), kwargs)


def vgg16_bn(
    *positional: object, weights: VGG16_BN_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg("vgg16_bn", *_legacy_pretrained("vgg16_bn", positional, weights, progress, kwargs), kwargs)


def vgg19(
    *positional: object, weights: VGG19_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-19 (configuration E), 16 convolutions."""
    return _vgg("vgg19", *_legacy_pretrained("vgg19", positional, weights, progress, kwargs), kwargs)


def vgg19_bn(
    *positional: object, weights: VGG19_BN_Weights | _OtherSource = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg("vgg19_bn", *_legacy_pretrained("vgg19_bn", positional, weights, progress, kwargs), kwargs)
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
