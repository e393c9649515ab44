"""The eight builders and the model registry.

Every builder takes the same keyword arguments, each in its signature and docstring (issue 25): `weights`,
`progress`, `num_classes`, `head`, `in_chans`, `dropout`, `init_weights`, `global_pool`, `features_only`,
`out_indices`, `device`. What `weights` may be is `sources.py`'s rules (`checkpoint.load` reads it); with
weights the model is built on the meta device and the checkpoint's tensors are assigned, so no time is
spent on a random initialisation that would be thrown away. Every argument is checked before a
checkpoint is fetched, so a typo costs no download.

torchvision's legacy calls work as in torchvision, each with its UserWarning: `pretrained=True/False`
(`weights=<enum>.IMAGENET1K_V1` / `weights=None`), `vgg16(True)` and `weights=True` (the same), and
`weights` and `progress` passed positionally. `_legacy_interface` turns them into keywords before the
builder runs, as torchvision's `handle_legacy_interface` does, so the signatures stay keyword-only.
"""

# No `from __future__ import annotations` here: the builders' annotations must be objects at run time,
# for tools that read them as torchvision's `get_model_weights` does (the enum inside `weights`' union).
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, ParamSpec, cast

import torch

from vggnet.checks import check_choice, check_float, check_int
from vggnet.errors import UsageError, UsageTypeError
from vggnet.models.checkpoint import load
from vggnet.models.config import GLOBAL_POOLS, HEADS, check_arch
from vggnet.models.sources import WeightsSource
from vggnet.models.vgg import NUM_CLASSES_MEANS, VGG, VGGFeatures, pretrained_cfg, stage_indices
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

Head = Literal["vgg", "gap", "fc7"]  # config.HEADS
GlobalPool = Literal["avg", ""]  # config.GLOBAL_POOLS
DeviceArg = str | torch.device | None
P = ParamSpec("P")

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
        return cast(WeightsSource, weights), progress  # classify checks what it really is
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


def _legacy_interface(builder: Callable[P, VGG]) -> Callable[P, VGG]:
    """`builder` also taking torchvision's legacy calls (see the module docstring); its signature is kept.

    An unknown keyword is refused here, naming the valid ones, after the legacy warnings and before anything runs.
    """
    arch = builder.__name__
    valid = list(inspect.signature(builder).parameters)
    call = cast(Callable[..., VGG], builder)

    @functools.wraps(builder)
    def wrapper(*positional: Any, **kwargs: Any) -> VGG:
        if positional or "pretrained" in kwargs or isinstance(kwargs.get("weights"), bool):
            weights, progress = kwargs.pop("weights", None), kwargs.pop("progress", True)
            kwargs["weights"], kwargs["progress"] = _legacy_pretrained(arch, positional, weights, progress, kwargs)
        unknown = sorted(set(kwargs) - set(valid))  # after the warnings, as torchvision's builders
        if unknown:
            raise UsageTypeError(
                f"{arch}() got an unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; the builders take {', '.join(valid)}"
            )
        return call(**kwargs)

    return cast(Callable[P, VGG], wrapper)


def _check_arguments(
    num_classes: int | None, head: str | None, in_chans: int | None, dropout: float, global_pool: str
) -> None:
    """Refuse a bad argument before any checkpoint is fetched: a typo must not cost a 528 MB download."""
    if num_classes is not None:
        check_int("num_classes", num_classes, least=0, what=NUM_CLASSES_MEANS)
    if in_chans is not None:
        check_int("in_chans", in_chans)
    if head is not None:
        check_choice("head", head, HEADS)
    check_float("dropout", dropout, least=0.0, most=1.0, expected="a probability between 0 and 1")
    check_choice("global_pool", global_pool, GLOBAL_POOLS, quote=True)
    if global_pool == "" and num_classes != 0:
        raise UsageError(
            "global_pool='' (no pooling) returns the feature map, which no classifier can take: "
            "pass num_classes=0 with it, or global_pool='avg'"
        )


def _vgg(
    arch: str,
    *,
    weights: WeightsSource,
    progress: bool,
    num_classes: int | None,
    head: str | None,
    in_chans: int | None,
    dropout: float,
    init_weights: bool,
    global_pool: str,
    features_only: bool,
    out_indices: Sequence[int] | None,
    device: DeviceArg,
) -> VGG:
    """The one builder behind the eight: arguments checked, then `checkpoint.load`."""
    _check_arguments(num_classes, head, in_chans, dropout, global_pool)
    if out_indices is not None and not features_only:
        raise UsageTypeError("out_indices picks the stages of features_only=True; pass features_only=True with it")
    picked = stage_indices(out_indices) if features_only else None  # checked before any download
    kwargs: dict[str, Any] = {"dropout": dropout, "init_weights": init_weights, "global_pool": global_pool}
    if head is not None:
        kwargs["head"] = head
    loaded = load(weights, arch=arch, progress=progress, num_classes=num_classes, in_chans=in_chans, device=device,
                  **kwargs)  # fmt: skip
    model = loaded.model
    if loaded.source.kind not in ("file", "url"):  # a file's preset and class names are its own (set by `load`)
        record = loaded.source.record or WEIGHTS_ENUMS[arch].from_name("DEFAULT").value
        model.pretrained_cfg = pretrained_cfg(record, model.num_classes, model.head)
    if picked is not None:  # timm's option (issue 12); like timm's, the builders still say VGG
        return cast(VGG, VGGFeatures(model, picked))
    return model


# What a builder's `weights` takes besides its own enum's members (a union, so that the annotation reads
# "VGG16_Weights | str | PathLike | Weights | None" to tools that look for the enum in it).
_OtherSource = str | os.PathLike[str] | Weights | None


@_legacy_interface
def vgg11(
    *,
    weights: VGG11_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-11 (configuration A, 8 convolutions) from Very Deep Convolutional Networks (arXiv:1409.1556).

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG11_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg11.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg11", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg11_bn(
    *,
    weights: VGG11_BN_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-11 with BatchNorm after every convolution.

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG11_BN_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg11_bn.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg11_bn", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg13(
    *,
    weights: VGG13_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-13 (configuration B, 10 convolutions) from Very Deep Convolutional Networks (arXiv:1409.1556).

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG13_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg13.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg13", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg13_bn(
    *,
    weights: VGG13_BN_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-13 with BatchNorm after every convolution.

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG13_BN_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg13_bn.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg13_bn", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg16(
    *,
    weights: VGG16_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-16 (configuration D, 13 convolutions) from Very Deep Convolutional Networks (arXiv:1409.1556).

    `weights` also takes VGG16_Weights.IMAGENET1K_FEATURES (Caffe-style input, no usable classifier).
    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG16_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg16.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg16", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg16_bn(
    *,
    weights: VGG16_BN_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-16 with BatchNorm after every convolution.

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG16_BN_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg16_bn.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg16_bn", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg19(
    *,
    weights: VGG19_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-19 (configuration E, 16 convolutions) from Very Deep Convolutional Networks (arXiv:1409.1556).

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG19_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg19.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg19", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


@_legacy_interface
def vgg19_bn(
    *,
    weights: VGG19_BN_Weights | _OtherSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
) -> VGG:
    """VGG-19 with BatchNorm after every convolution.

    torchvision's legacy forms still work, with its UserWarning: pretrained=True/False, and weights and
    progress given positionally.

    Args:
        weights: None (random initialisation), a member of VGG19_BN_Weights or its name ("DEFAULT",
            "IMAGENET1K_V1"), torchvision's member, a `vggnet.Weights` record, a checkpoint file or URL, or a
            Hugging Face Hub name ("hf-hub:timm/vgg19_bn.tv_in1k"); see `vggnet.load`.
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights). Another width gets a
            freshly initialised fc8 (logged at INFO); 0 removes fc8 (the model returns the pre-logits features).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear(512, num_classes), for small data or
            small images), "fc7" (the vgg head, named for finetune's linear probe); None: the weights' own.
        in_chans: input channels; None: the weights' own (3). A 3-channel first convolution is adapted
            (`vggnet.models.vgg.adapt_input_conv`: 1 channel gets the sum over RGB).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does (weights, when given, replace every tensor anyway).
        global_pool: "avg" (pool as the head was built) or "" (no pooling: the model returns pool5's map;
            needs num_classes=0), timm's argument.
        features_only: a `VGGFeatures` returning the stage outputs of `VGG.feature_info` (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "cuda:1", "meta").

    Returns:
        The model, in training mode (a `VGGFeatures` with features_only=True).

    Raises:
        UsageError: a bad argument (a ValueError; a TypeError for an unknown one), before any download.
        DeviceError: a device this machine does not have.
        ChecksumError: downloaded weights whose SHA-256 is not the expected one (nothing is kept).
        DownloadError: weights that cannot be fetched.
        BadCheckpointError: a checkpoint that is not a VGG or does not fit the model asked for.
    """
    return _vgg(
        "vgg19_bn", weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans,
        dropout=dropout, init_weights=init_weights, global_pool=global_pool, features_only=features_only,
        out_indices=out_indices, device=device,
    )  # fmt: skip


# builder name -> builder, in the paper's order: the registry every list of names comes from
BUILDERS: Mapping[str, Callable[..., VGG]] = MappingProxyType(
    {f.__name__: f for f in (vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)}
)


def list_models() -> list[str]:
    """The builder names, in the paper's order.

    Returns:
        ["vgg11", "vgg11_bn", ..., "vgg19_bn"].
    """
    return list(BUILDERS)


def get_model(
    name: str,
    *,
    weights: WeightsSource = None,
    progress: bool = True,
    num_classes: int | None = None,
    head: Head | None = None,
    in_chans: int | None = None,
    dropout: float = 0.5,
    init_weights: bool = True,
    global_pool: GlobalPool = "avg",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    device: DeviceArg = None,
    pretrained: bool | None = None,
) -> VGG:
    """Build a model by name: get_model("vgg16", weights="DEFAULT"); the builders' arguments, by keyword.

    Args:
        name: a builder name, any case ("vgg16", "VGG16_BN"; see `list_models`).
        weights: what the builder's `weights` takes (a record name such as "DEFAULT", a file, a URL, ...).
        progress: show a progress bar while downloading.
        num_classes: outputs of fc8; None: the weights' own (1000 without weights); 0: no fc8.
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear) or "fc7"; None: the weights' own.
        in_chans: input channels; None: the weights' own (3).
        dropout: probability of the vgg head's two dropouts.
        init_weights: initialise as torchvision does.
        global_pool: "avg" (pool as the head was built) or "" (no pooling; needs num_classes=0).
        features_only: a `VGGFeatures` returning the stage outputs (timm's option).
        out_indices: with features_only, the stages to return (0-5; default all six).
        device: where parameters are created and weights loaded ("cpu", "cuda", "meta").
        pretrained: torchvision's deprecated form of weights (True: IMAGENET1K_V1), with its UserWarning.

    Returns:
        The model the builder returns.

    Raises:
        UsageError: an unknown name (listing the valid ones) or a bad argument, before any download; and
            whatever the builder raises (see `vgg16`).
    """
    builder = BUILDERS[check_arch(name)]
    legacy = {} if pretrained is None else {"pretrained": pretrained}
    return builder(
        weights=weights, progress=progress, num_classes=num_classes, head=head, in_chans=in_chans, dropout=dropout,
        init_weights=init_weights, global_pool=global_pool, features_only=features_only, out_indices=out_indices,
        device=device, **legacy,
    )  # fmt: skip


def get_model_weights(name: str | Callable[..., VGG]) -> type[WeightsEnum]:
    """The weights enum of a builder, given its name or the builder itself.

    Args:
        name: a builder name, any case, or the builder.

    Returns:
        The builder's weights enum (`VGG16_Weights` for "vgg16").

    Raises:
        UsageError: an unknown name (the valid ones listed).
    """
    if callable(name):
        name = getattr(name, "__name__", "")
    return WEIGHTS_ENUMS[check_arch(name)]
