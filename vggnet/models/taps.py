"""Paper names for every layer of a VGG, and the taps that read a batch out at any of them.

One naming scheme, used by `VGG.layer_names`/`extract`/`tap_info`, by `summarize` and by
`PerceptualLoss`: conv1_1, [bn1_1,] relu1_1, ..., pool5 for `features` (the row of the paper's table,
or the modules of a `make_layers` Sequential: the two give the same names, by one algorithm), then
the head's layers, named after the head (`head_layers`):

- head "vgg" or "fc7": avgpool, fc6, relu6, drop6, fc7, relu7, drop7, fc8 for `avgpool` and
  `classifier[0..6]`; with num_classes=0 fc8 is an Identity and has no name (there is no fc8).
- head "gap": gap, fc for the global average pool `avgpool` and `classifier[0]` (no fc without classes).
- a classifier the user replaced (torchvision's `model.classifier = nn.Identity()`, a Sequential of their
  own): its modules are named by their state-dict paths, "classifier" or "classifier.0", "classifier.1", ...
  A torchvision-style `model.classifier[6] = nn.Linear(4096, 10)` keeps the paper's names.
- `global_pool=""` (no pooling: the model returns pool5's map): no layer after pool5.

Every named module is a tap: `extract(x, ["drop6"])` is relu6's output after dropout (the same
tensor in eval mode). The flatten belongs to the fc6 step, so `relu6` is exactly `classifier[:2]`
applied by hand. The Identity that `fold_batchnorm` leaves where a BatchNorm was keeps its bn name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vggnet.errors import UsageError, UsageTypeError
from vggnet.models.config import arch_config

__all__ = [
    "GAP_HEAD_NAMES",
    "HEAD_NAMES",
    "TapInfo",
    "feature_layers",
    "feature_names",
    "head_layers",
    "layer_list",
    "layer_names",
    "module_names",
    "pool_cells",
    "run_taps",
    "field_geometry",
    "tap_info",
    "tap_steps",
]

# head "vgg" (and "fc7"): `avgpool`, then classifier[0..6]
HEAD_NAMES = ("avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")
# head "gap": `avgpool` (a global average pool), then classifier[0]
GAP_HEAD_NAMES = ("gap", "fc")

Step = tuple[str, Sequence[Callable[[torch.Tensor], torch.Tensor]]]


class Network(Protocol):
    """What the taps read of a model: a `VGG`, or anything with its three parts (and `head`, `global_pool` if set)."""

    @property
    def features(self) -> nn.Module: ...

    @property
    def avgpool(self) -> nn.Module: ...

    @property
    def classifier(self) -> nn.Module: ...

    @property
    def in_channels(self) -> int: ...


@dataclass(frozen=True)
class TapInfo:
    """One tap: output channels, stride and receptive field side in input pixels (None after pool5).

    Attributes:
        name: the layer's name (`layer_names`).
        channels: its output channels; a flattened tap's width (512 * 7 * 7 after the vgg head's pool).
        stride: input pixels per output step; None after pool5 (the head sees the whole image).
        receptive_field: the side of the input square one output sees; None after pool5.
    """

    name: str
    channels: int
    stride: int | None
    receptive_field: int | None


def feature_names(features: str | nn.Module) -> list[str]:
    """The paper's name of every layer of `features`: a builder name ("vgg16_bn") or a `make_layers` Sequential.

    Args:
        features: a builder name, or a `make_layers` Sequential.

    Returns:
        conv1_1, [bn1_1,] relu1_1, ..., pool5, one per layer.

    Raises:
        UsageTypeError: a module that is not a flat Sequential of VGG's layers (a TypeError).
    """
    if isinstance(features, str):
        row, batch_norm = arch_config(features)
        kinds = [kind for v in row for kind in (("pool",) if v == "M" else _conv_kinds(batch_norm))]
    else:
        kinds = []
        for m in feature_layers(features):
            kind = _kind(m, kinds[-1] if kinds else None)
            if kind is None:
                raise UsageTypeError(f"features[{len(kinds)}] is a {type(m).__name__}, which has no VGG layer name")
            kinds.append(kind)
    return _paper_names(kinds)


def layer_names(source: str | Network) -> list[str]:
    """Every layer's name in forward order, for a builder name or a model: conv1_1, ..., pool5, avgpool, ..., fc8.

    Args:
        source: a builder name (the vgg head's names), or a model (the names of its head, `head_layers`).

    Returns:
        The names, in forward order.
    """
    if isinstance(source, str):
        return [*feature_names(source), *HEAD_NAMES]
    return list(module_names(source).values())


def module_names(model: Network) -> dict[str, str]:
    """Each named module's state-dict path -> its name: {"features.0": "conv1_1", ..., "classifier.6": "fc8"}.

    Args:
        model: a VGG (or anything with its parts).

    Returns:
        path -> name, in forward order.
    """
    names = {f"features.{i}": name for i, name in enumerate(feature_names(model.features))}
    return names | {path: name for name, path, _ in head_layers(model)}


def head_layers(model: Network) -> list[tuple[str, str, nn.Module]]:
    """(name, state-dict path, module) of each layer the forward runs after pool5; the names follow the head.

    See the module docstring: the paper's names for the vgg head, gap and fc for the gap head, the
    state-dict path for the modules of a classifier the user replaced, nothing without pooling.

    Args:
        model: a VGG (or anything with its parts; `head` and `global_pool` read where set).

    Returns:
        (name, path, module) per layer, in forward order.
    """
    if getattr(model, "global_pool", "avg") == "":
        return []
    gap = getattr(model, "head", "vgg") == "gap"
    layers = [(GAP_HEAD_NAMES[0] if gap else HEAD_NAMES[0], "avgpool", model.avgpool)]
    classifier = model.classifier
    if not isinstance(classifier, nn.Sequential):
        return [*layers, ("classifier", "classifier", classifier)]
    children = list(classifier)
    names = _paper_head(children, gap) or [f"classifier.{i}" for i in range(len(children))]
    return layers + [(name, f"classifier.{i}", m) for i, (name, m) in enumerate(zip(names, children)) if name]


def _paper_head(children: Sequence[nn.Module], gap: bool) -> list[str] | None:
    """The names of VGG's own classifier ("" for the Identity of num_classes=0), or None for another one."""
    last_is_identity = bool(children) and isinstance(children[-1], nn.Identity)
    if gap and len(children) == 1 and isinstance(children[0], (nn.Linear, nn.Identity)):
        return [""] if last_is_identity else [GAP_HEAD_NAMES[1]]
    vgg = len(children) == len(HEAD_NAMES) - 1 and all(isinstance(children[i], nn.Linear) for i in (0, 3))
    if gap or not vgg:
        return None
    return [*HEAD_NAMES[1:-1], "" if last_is_identity else HEAD_NAMES[-1]]


def feature_layers(features: nn.Module) -> nn.Sequential:
    """`features` as the flat `make_layers` Sequential the names are read from; TypeError for anything else.

    Args:
        features: a model's `features`.

    Returns:
        `features` itself.

    Raises:
        UsageTypeError: not an nn.Sequential (a TypeError).
    """
    if not isinstance(features, nn.Sequential):
        raise UsageTypeError(
            f"named taps need `features` to be a make_layers Sequential, not {type(features).__name__}; "
            "build it with vggnet.make_layers"
        )
    return features


def tap_steps(model: Network) -> list[Step]:
    """(name, the callables that produce it from the previous tap) for every tap of `model`.

    Args:
        model: a VGG (or anything with its parts).

    Returns:
        One step per name of `layer_names(model)`.
    """
    out: list[Step] = [(name, [m]) for name, m in zip(feature_names(model.features), feature_layers(model.features))]
    for i, (name, _, m) in enumerate(head_layers(model)):
        out.append((name, [_flatten, m] if i == 1 else [m]))  # the flatten belongs to the first classifier layer
    return out


def tap_info(model: Network) -> list[TapInfo]:
    """Channels, stride and receptive field (in input pixels) of every tap, computed from the layers.

    The pool after pool5 and the classifier see the whole (adaptively pooled) image: their stride and
    receptive field are None. A flattened tap's channels are its width (512 * 7 * 7 for the vgg head's pool).

    Args:
        model: a VGG (or anything with its parts).

    Returns:
        One `TapInfo` per name of `layer_names(model)`.
    """
    names = feature_names(model.features)
    layers = feature_layers(model.features)
    infos: list[TapInfo] = []
    channels = model.in_channels
    for name, m, (size, jump, _) in zip(names, layers, field_geometry(list(layers))):
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        infos.append(TapInfo(name, channels, jump, size))
    for i, (name, _, m) in enumerate(head_layers(model)):
        if i == 1:
            channels *= pool_cells(model.avgpool)  # flattened
        if isinstance(m, nn.Linear):
            channels = m.out_features
        infos.append(TapInfo(name, channels, None, None))
    return infos


def pool_cells(pool: nn.Module) -> int:
    """How many values per channel a pool gives: 49 for the 7x7 adaptive pool, 1 for a global one.

    Args:
        pool: a model's `avgpool`.

    Returns:
        Output height times width.

    Raises:
        UsageTypeError: a pool whose output size depends on the input (a TypeError).
    """
    if not isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        raise UsageTypeError(
            f"avgpool is a {type(pool).__name__}: the width after it depends on the input; "
            "use an nn.AdaptiveAvgPool2d (VGG's), whose output size is fixed"
        )
    size = pool.output_size
    sides = [size, size] if isinstance(size, int) else list(size or (None, None))
    height, width = sides[0], sides[-1]
    if height is None or width is None:
        raise UsageTypeError(f"avgpool {pool} keeps a side of the input: the width after it depends on the input")
    return int(height) * int(width)


def field_geometry(layers: Sequence[object], names: Sequence[str] = ()) -> list[tuple[int, int, float]]:
    """(size, jump, start) of the receptive field after each layer: the one recurrence (see receptive.py).

    For kernel k, stride s, padding p, dilation d: size += d(k-1) jump; start += (d(k-1)/2 - p) jump;
    jump *= s. Layers other than convolutions and pools leave the field as it is. `names` name the
    layers in the error for one the recurrence cannot take (padding "same", a non-square kernel).

    Args:
        layers: the layers in forward order.
        names: their names, for the error.

    Returns:
        (size, jump, start) after each layer.
    """
    out: list[tuple[int, int, float]] = []
    size, jump, start = 1, 1, 0.0
    for i, m in enumerate(layers):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d = _geometry(names[i] if i < len(names) else f"layer {i}", m)
            span = d * (k - 1)
            size, jump, start = size + span * jump, jump * s, start + (span / 2 - p) * jump
        out.append((size, jump, start))
    return out


def _geometry(name: str, m: nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a square layer; ValueError for anything the recurrence cannot take."""
    dilation = m.dilation if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) else 1
    values = [m.kernel_size, m.stride, m.padding, dilation]
    if any(isinstance(v, str) for v in values):
        raise UsageError(f"{name}: padding {m.padding!r} is not a number; give the layer explicit integer padding")
    sides = [v if isinstance(v, tuple) else (v, v) for v in values]
    if any(len(set(v)) != 1 for v in sides):
        raise UsageError(f"{name} is not square ({m}); receptive fields are computed for square layers only")
    k, s, p, d = (int(v[0]) for v in sides)
    return k, s, p, d


def layer_list(layers: str | Sequence[str]) -> list[str]:
    """A single name is a list of one.

    Args:
        layers: a name or several.

    Returns:
        The names as a list.
    """
    return [layers] if isinstance(layers, str) else list(layers)


def run_taps(steps: Sequence[Step], x: torch.Tensor, layers: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """Run `steps` up to the last of `layers`, keeping those outputs (cloned where the next operation is in place).

    Args:
        steps: `tap_steps` of a model.
        x: the input batch.
        layers: the names wanted, a name or several.

    Returns:
        name -> output, in the order asked.

    Raises:
        UsageError: no name, or names that are no step (the valid ones listed).
    """
    names = [name for name, _ in steps]
    layers = layer_list(layers)
    if not layers:
        raise UsageError(f"no layers asked; pass a list of layer names, e.g. ['relu1_2']; valid: {', '.join(names)}")
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise UsageError(f"unknown layers {unknown}; valid: {', '.join(names)}")
    wanted = set(layers)
    last = max(names.index(name) for name in layers)
    taps: dict[str, torch.Tensor] = {}
    for i, (name, step) in enumerate(steps[: last + 1]):
        for fn in step:
            x = fn(x)
        if name in wanted:
            taps[name] = x.clone() if _overwritten(steps[i + 1 : last + 1]) else x
    return {name: taps[name] for name in layers}


def _overwritten(later: Sequence[Step]) -> bool:
    """Whether the first real operation of `later` works in place (Identity, left by fold_batchnorm, is skipped)."""
    for _, step in later:
        for fn in step:
            if not isinstance(fn, nn.Identity):
                return bool(getattr(fn, "inplace", False))
    return False


def _conv_kinds(batch_norm: bool) -> tuple[str, ...]:
    return ("conv", "bn", "relu") if batch_norm else ("conv", "relu")


def _kind(m: nn.Module, previous: str | None) -> str | None:
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return "pool"
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, _BatchNorm) or (isinstance(m, nn.Identity) and previous == "conv"):
        return "bn"  # SyncBatchNorm too, and the Identity left by fold_batchnorm
    if isinstance(m, nn.ReLU):
        return "relu"
    return None


def _paper_names(kinds: Sequence[str]) -> list[str]:
    """conv -> conv{block}_{n}, bn/relu -> bn/relu{block}_{n} of the conv before, pool -> pool{block}."""
    names: list[str] = []
    block, conv = 1, 0
    for kind in kinds:
        if kind == "pool":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
            continue
        if kind == "conv":
            conv += 1
        names.append(f"{kind}{block}_{conv}")
    return names


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)  # (N, 512, 7, 7) -> (N, 25088); gap: (N, 512, 1, 1) -> (N, 512)


def _side(size: int | tuple[int, ...]) -> int:
    return size if isinstance(size, int) else size[0]
