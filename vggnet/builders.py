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
- `weights` also takes torchvision's own members (`torchvision.models.VGG16_Weights.DEFAULT`),
  matched by URL to vggnet's records.
- torchvision's legacy calls work as in torchvision, each with its UserWarning: `pretrained=True/False`
  (`weights=<enum>.IMAGENET1K_V1` / `weights=None`), `vgg16(True)` and `weights=True` (the same), and
  `weights` and `progress` passed positionally.

Every argument is checked before a checkpoint is fetched, so a typo costs no download.
"""

# No `from __future__ import annotations` here: the builders' annotations must be objects at run time,
# for tools that read them as torchvision's `get_model_weights` does (the enum inside `weights`' union).
import logging
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import nn

from .checks import check_int
from .config import ARCHS, IN_CHANNELS, arch_config
from .model import NUM_CLASSES_MEANS, VGG, adapt_input_conv, init_module, make_layers
from .weights import (
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
    WeightsArg,
    WeightsEnum,
    resolve_weights,
)

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


_SINCE = "since torchvision 0.13"


def _legacy_pretrained(
    arch: str, positional: tuple[object, ...], weights: object, progress: bool, kwargs: dict[str, Any]
) -> tuple[WeightsArg, bool]:
    """(weights, progress) for torchvision's legacy calls, warning as torchvision does (UserWarning).

    `vgg16(True)`, `vgg16(weights=True)` and `pretrained=True` mean IMAGENET1K_V1; False means None.
    Positional arguments are `weights` then `progress`, as torchvision's keyword-only shim reads them.
    """
    if positional:
        if len(positional) > 2:
            raise TypeError(
                f"{arch}() takes at most 2 positional arguments (weights, progress), got {len(positional)}; "
                "pass the others by keyword"
            )
        if weights is not None:
            raise TypeError(f"{arch}() got weights both positionally and as weights=; pass it once, by keyword")
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
            raise ValueError(f"pass either weights= or the deprecated pretrained= to {arch}(), not both")
        weights = kwargs.pop("pretrained")
        legacy = True
        warnings.warn(
            f"The parameter 'pretrained' is deprecated {_SINCE} and may be removed in the future, "
            "please use 'weights' instead.",
            UserWarning,
            stacklevel=3,
        )
    if not legacy:
        return cast(WeightsArg, weights), progress  # resolve_weights checks what it really is
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
    if kwargs.get("device") is not None:
        torch.device(kwargs["device"])  # a RuntimeError that lists the valid device types


def _vgg(arch: str, weights: WeightsArg, progress: bool, kwargs: dict[str, Any]) -> VGG:
    _check_arguments(kwargs)
    record = resolve_weights(arch, weights)
    device = kwargs.pop("device", None)
    row, batch_norm = arch_config(arch)
    if record is None:
        in_chans = kwargs.pop("in_chans", IN_CHANNELS)
        with torch.device(device) if device is not None else nullcontext():
            return VGG(make_layers(row, batch_norm, in_chans), **kwargs)
    state = record.get_state_dict(progress=progress, map_location=device if device is not None else "cpu")
    return model_from_state(arch, state, device, kwargs)


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
def vgg11(
    *positional: object, weights: VGG11_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-11 (configuration A), 8 convolutions; see the module docstring for the arguments."""
    return _vgg("vgg11", *_legacy_pretrained("vgg11", positional, weights, progress, kwargs), kwargs)


def vgg11_bn(
    *positional: object, weights: VGG11_BN_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg("vgg11_bn", *_legacy_pretrained("vgg11_bn", positional, weights, progress, kwargs), kwargs)


def vgg13(
    *positional: object, weights: VGG13_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-13 (configuration B), 10 convolutions."""
    return _vgg("vgg13", *_legacy_pretrained("vgg13", positional, weights, progress, kwargs), kwargs)


def vgg13_bn(
    *positional: object, weights: VGG13_BN_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg("vgg13_bn", *_legacy_pretrained("vgg13_bn", positional, weights, progress, kwargs), kwargs)


def vgg16(
    *positional: object, weights: VGG16_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-16 (configuration D), 13 convolutions; also takes VGG16_Weights.IMAGENET1K_FEATURES."""
    return _vgg("vgg16", *_legacy_pretrained("vgg16", positional, weights, progress, kwargs), kwargs)


def vgg16_bn(
    *positional: object, weights: VGG16_BN_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg("vgg16_bn", *_legacy_pretrained("vgg16_bn", positional, weights, progress, kwargs), kwargs)


def vgg19(
    *positional: object, weights: VGG19_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-19 (configuration E), 16 convolutions."""
    return _vgg("vgg19", *_legacy_pretrained("vgg19", positional, weights, progress, kwargs), kwargs)


def vgg19_bn(
    *positional: object, weights: VGG19_BN_Weights | str | Weights | None = None, progress: bool = True, **kwargs: Any
) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg("vgg19_bn", *_legacy_pretrained("vgg19_bn", positional, weights, progress, kwargs), kwargs)
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
