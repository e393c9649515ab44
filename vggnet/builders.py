"""The eight builders and the model registry.

Shared arguments of every builder (documented once here):

- `weights`: None (random initialisation), a member of the builder's enum, its name as a string
  ("DEFAULT", "IMAGENET1K_V1", "VGG16_Weights.IMAGENET1K_V1"), or a user's own `Weights` record.
  With weights the model is built on the meta device and the checkpoint's tensors are assigned,
  so no time is spent on a random initialisation that would be thrown away.
- `progress`: show a progress bar while downloading.
- `device`: where the parameters are created ("cpu", "cuda", "cuda:1"); a checkpoint is loaded
  straight onto it.
- `num_classes`: with weights whose last layer has another size, every other layer is loaded and
  fc8 is freshly initialised (logged at INFO).
- `in_chans`: input channels (default 3). With weights, a 3-channel first convolution is adapted by
  `model.adapt_input_conv` (1 channel: the sum over RGB; see there for 2 and N > 3).
- other keyword arguments go to `VGG` (`dropout`, `init_weights`).
- `features_only=True` (timm's option): a `model.VGGFeatures` returning the six stage outputs of
  `VGG.feature_info` instead of logits; `out_indices` picks some of them.
- `pretrained=True/False`: deprecated spelling of `weights="IMAGENET1K_V1"` / `weights=None`.

Every argument is checked before a checkpoint is fetched, so a typo costs no download.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import nn

from .checks import check_int
from .config import ARCHS, IN_CHANNELS, arch_config
from .interop import pretrained_cfg
from .model import NUM_CLASSES_MEANS, VGG, VGGFeatures, adapt_input_conv, init_module, make_layers, stage_indices
from .weights import WEIGHTS_ENUMS, WeightsArg, WeightsEnum, resolve_weights

__all__ = [
    "arch_of_state",
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

logger = logging.getLogger(__name__)

_HEAD = "classifier.6."
_FIRST = "features.0.weight"


def _legacy_pretrained(arch: str, weights: WeightsArg, kwargs: dict[str, Any]) -> WeightsArg:
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
_ARGUMENTS = ("device", "num_classes", "in_chans", "dropout", "init_weights", "features_only")


def _check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse a bad argument before any checkpoint is fetched: a typo must not cost a 528 MB download."""
    unknown = sorted(set(kwargs) - set(_ARGUMENTS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the builders take weights, progress, {', '.join(_ARGUMENTS)}"
        )
    check_int("num_classes", kwargs.get("num_classes", 1), least=0, what=NUM_CLASSES_MEANS)
    check_int("in_chans", kwargs.get("in_chans", IN_CHANNELS))
    dropout = kwargs.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be a probability between 0 and 1, got {dropout!r}")
    if kwargs.get("device") is not None:
        torch.device(kwargs["device"])  # a RuntimeError that lists the valid device types


def _vgg(arch: str, weights: WeightsArg, progress: bool, kwargs: dict[str, Any]) -> VGG:
    if kwargs.pop("features_only", False):  # timm's option (issue 12); like timm's, the builders still say VGG
        out_indices = stage_indices(kwargs.pop("out_indices", None))  # checked before any download
        return cast(VGG, VGGFeatures(_vgg(arch, weights, progress, kwargs), out_indices))
    weights = _legacy_pretrained(arch, weights, kwargs)
    _check_arguments(kwargs)
    record = resolve_weights(arch, weights)
    device = kwargs.pop("device", None)
    row, batch_norm = arch_config(arch)
    if record is None:
        in_chans = kwargs.pop("in_chans", IN_CHANNELS)
        with torch.device(device) if device is not None else nullcontext():
            model = VGG(make_layers(row, batch_norm, in_chans), **kwargs)
    else:
        state = record.get_state_dict(progress=progress, map_location=device if device is not None else "cpu")
        model = model_from_state(arch, state, device, kwargs)
    model.pretrained_cfg = pretrained_cfg(record or WEIGHTS_ENUMS[arch].from_name("DEFAULT").value, model.num_classes)
    return model


def model_from_state(
    arch: str, state: Mapping[str, torch.Tensor], device: str | torch.device | None, kwargs: dict[str, Any]
) -> VGG:
    """Build `arch` on the meta device and assign a checkpoint's state dict (new head and in_chans handled)."""
    in_chans = kwargs.pop("in_chans", IN_CHANNELS)
    first = state.get(_FIRST)
    if first is not None and first.shape[1] == IN_CHANNELS != in_chans:
        logger.info("%s: adapting the pretrained first convolution from 3 to %d input channels", arch, in_chans)
        state = {**state, _FIRST: adapt_input_conv(first, in_chans)}
    head = state.get(_HEAD + "weight")
    checkpoint_classes = head.shape[0] if head is not None else None
    num_classes = kwargs.setdefault("num_classes", checkpoint_classes or 1000)
    new_head = checkpoint_classes is not None and num_classes != checkpoint_classes
    kwargs["init_weights"] = False
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        model = VGG(make_layers(row, batch_norm, in_chans), **kwargs)
    if new_head:
        logger.info(
            "%s: checkpoint has %d classes, num_classes=%d: loading every layer but fc8, which is freshly initialised",
            arch, checkpoint_classes, num_classes,
        )  # fmt: skip
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD)}
    load_checkpoint_state(model, state, device=device, fresh=(_HEAD,) if new_head else ())
    return model


def arch_of_state(state: Mapping[str, torch.Tensor], source: str = "the state dict") -> str:
    """The builder whose checkpoints have exactly `state`'s keys (fc8's width and the input channels may differ).

    Raises ValueError naming the valid builders when none fits; `source` names the state dict in that message.
    """
    keys = {k for k in state if not k.endswith("num_batches_tracked")}  # the 2017 checkpoints lack them
    for arch in ARCHS:
        row, batch_norm = arch_config(arch)
        with torch.device("meta"):
            layout = VGG(make_layers(row, batch_norm), init_weights=False).state_dict()
        if keys == {k for k in layout if not k.endswith("num_batches_tracked")}:
            return arch
    raise ValueError(f"{source} is not a VGG checkpoint: its keys match none of {', '.join(ARCHS)}")


def load_checkpoint_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    fresh: tuple[str, ...] = (),
) -> None:
    """Assign `state` to a model built on the meta device, strictly.

    Tolerates only missing BatchNorm `num_batches_tracked` (the 2017 checkpoints lack them) and the
    modules named by the `fresh` key prefixes, which are created on `device` and initialised.
    """
    expected = model.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    missing = [k for k in missing if not k.startswith(fresh)] if fresh else missing
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in state.keys() & expected.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        hint = " (is it a checkpoint of another VGG variant?)" if len(missing) + len(unexpected) > 8 else ""
        raise RuntimeError(
            f"checkpoint does not fit the model{hint}: missing keys {_first(missing)}; "
            f"unexpected keys {_first(unexpected)}; shape mismatches {_first(wrong_shape)}"
        )
    full = dict(state)
    for k in expected.keys() - state.keys():
        if k.endswith("num_batches_tracked"):
            full[k] = torch.zeros((), dtype=torch.long, device=device)
    for name, module in model.named_modules():
        if fresh and (name + ".").startswith(fresh):
            module.to_empty(device=device or "cpu")
            init_module(module)
            full.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    model.load_state_dict(full, strict=True, assign=True)


def _first(items: list[str], n: int = 8) -> str:
    return str(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# fmt: off
def vgg11(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-11 (configuration A), 8 convolutions; see the module docstring for the arguments."""
    return _vgg("vgg11", weights, progress, kwargs)


def vgg11_bn(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg("vgg11_bn", weights, progress, kwargs)


def vgg13(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-13 (configuration B), 10 convolutions."""
    return _vgg("vgg13", weights, progress, kwargs)


def vgg13_bn(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg("vgg13_bn", weights, progress, kwargs)


def vgg16(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-16 (configuration D), 13 convolutions; also takes VGG16_Weights.IMAGENET1K_FEATURES."""
    return _vgg("vgg16", weights, progress, kwargs)


def vgg16_bn(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg("vgg16_bn", weights, progress, kwargs)


def vgg19(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-19 (configuration E), 16 convolutions."""
    return _vgg("vgg19", weights, progress, kwargs)


def vgg19_bn(*, weights: WeightsArg = None, progress: bool = True, **kwargs: Any) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg("vgg19_bn", weights, progress, kwargs)
# fmt: on

_BUILDERS: dict[str, Callable[..., VGG]] = {
    "vgg11": vgg11,
    "vgg11_bn": vgg11_bn,
    "vgg13": vgg13,
    "vgg13_bn": vgg13_bn,
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "vgg19": vgg19,
    "vgg19_bn": vgg19_bn,
}


def _builder_name(name: str) -> str:
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(_BUILDERS)}")
    return key


def list_models() -> list[str]:
    """The builder names, in the paper's order."""
    return list(_BUILDERS)


def get_model(name: str, **config: Any) -> VGG:
    """Build a model by name: get_model("vgg16", weights="DEFAULT")."""
    return _BUILDERS[_builder_name(name)](**config)


def get_model_weights(name: str | Callable[..., VGG]) -> type[WeightsEnum]:
    """The weights enum of a builder, given its name or the builder itself."""
    if callable(name):
        name = getattr(name, "__name__", "")
    return WEIGHTS_ENUMS[_builder_name(name)]
