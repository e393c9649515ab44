"""The VGG network: `make_layers` turns a row of the paper's table into `features`, `VGG` adds the head.

Module creation order and initialisation calls follow torchvision's `vgg.py` exactly, so under the
same `torch.manual_seed` a fresh model holds bit-for-bit the parameters torchvision's would.

Beside the forward pass the network carries what fine-tuning and feature work need (issue 4):
named taps (`layer_names`, `extract`, `tap_info`), new heads (`reset_classifier`), freezing,
per-block learning rates (`param_groups`) and gradient checkpointing per conv block; with every head
(issue 25): "vgg", "gap", "fc7", no fc8 (num_classes=0), no pooling (global_pool=""), and a classifier
the user put in. And timm's conventions: `forward_intermediates`, `prune_intermediate_layers`,
`group_matcher`, `reset_classifier(num_classes, global_pool)`, a settable `default_cfg`.

Tap names are the paper's (conv1_1, [bn1_1,] relu1_1, ..., pool5, avgpool, fc6, relu6, drop6, fc7,
relu7, drop7, fc8); after pool5 they follow the head (gap, fc for the gap head; see `taps.head_layers`).
`vggnet.models.taps` computes them and runs the taps, the methods here delegate to it.

No `from __future__ import annotations` here: FX records `forward`'s annotations as it finds them, and
strings ('torch.Tensor') make `torch.jit.script(torch.fx.symbolic_trace(model))` fail (issue 25).
"""

import contextlib
import logging
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch._jit_internal import is_scripting  # torch.jit.is_scripting, which torch.jit leaves out of __all__
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from vggnet.checks import check_choice, check_int, is_int
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.errors import UsageError, UsageTypeError
from vggnet.models.config import GLOBAL_POOLS, HEADS, HIDDEN, IN_CHANNELS, MIN_SIZE, POOLED_SIZE, Layer
from vggnet.models.taps import TapInfo, feature_layers, layer_names, pool_cells, run_taps, tap_info, tap_steps

__all__ = [
    "VGG",
    "VGGFeatures",
    "adapt_input_conv",
    "make_layers",
    "pretrained_cfg",
    "take_indices",
]

logger = logging.getLogger(__name__)


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


def pretrained_cfg(record: Preprocessing | None, num_classes: int = 1000, head: str = "vgg") -> dict[str, Any]:
    """timm's `pretrained_cfg` keys describing `record`'s weights (None: torchvision's ImageNet preset).

    As in timm it describes the weights, not later changes: `crop_pct` is crop / resize (224 / 256 =
    0.875), `input_size` is (channels of `mean`, crop, crop), `num_classes` the head's outputs and
    `classifier` its last Linear (classifier.6; classifier.0 for the gap head).

    Args:
        record: what the weights expect (a `vggnet.Weights`, or any object with its preset fields); None:
            torchvision's ImageNet preset.
        num_classes: the outputs of the head.
        head: "vgg", "gap" or "fc7".

    Returns:
        timm's keys: url, num_classes, input_size, pool_size, crop_pct, crop_mode, fixed_input_size,
        interpolation, mean, std, first_conv, classifier, license.
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
        "classifier": "classifier.0" if head == "gap" else "classifier.6",
        "license": "bsd-3-clause",
    }


def make_layers(cfg: Sequence[Layer], batch_norm: bool = False, in_channels: int = IN_CHANNELS) -> nn.Sequential:
    """One flat Sequential: per number a 3x3 conv (+ BatchNorm) + in-place ReLU, per "M" a 2x2 max-pool.

    Args:
        cfg: a row of the paper's table (`config.CONFIGS`): channels, or "M" for a max-pool.
        batch_norm: a BatchNorm2d after each convolution.
        in_channels: the input channels of the first convolution.

    Returns:
        The `features` Sequential, torchvision's modules in torchvision's order.
    """
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """`features`, an adaptive average pool, and the classifier: fc6, fc7, fc8 or, with `head="gap"`, one Linear.

    State-dict keys are those of the official checkpoints: `features.N.*` and
    `classifier.{0,3,6}.*`. With `num_classes=0` fc8 is an `nn.Identity` (no keys) and the model
    returns relu7, the (N, 4096) pooled feature vector, as timm's do.

    The model scripts, FX-traces (and then scripts), exports and compiles with fullgraph=True (issues 12,
    25); the input checks run only for eager callers. `head="gap"` replaces pool and classifier by a
    global average pool and `classifier.0`, one Linear(512, num_classes); see `HEADS`. Layer names
    follow the head (`vggnet.models.taps`): fc6 ... fc8 for the vgg head, gap and fc for the gap head.

    Args:
        features: the convolutional layers, a `make_layers` Sequential for the named taps.
        num_classes: outputs of the last Linear; 0 for none (the model returns the pre-logits features).
        init_weights: initialise as torchvision does (False leaves PyTorch's defaults, for loading weights).
        dropout: probability of the two dropouts of the vgg head (the gap head has none).
        head: "vgg" (fc6-fc8), "gap" (global average pool + one Linear) or "fc7" (the vgg head).
        global_pool: "avg" (the head's own average pool) or "" (no pooling: the model returns pool5's
            (N, 512, H/32, W/32) map; only with num_classes=0, as timm's linear heads).

    Raises:
        UsageError: a bad num_classes, dropout, head or global_pool (a ValueError).
    """

    # Properties TorchScript must not compile (they read modules by type or build dicts).
    __jit_unused_properties__ = (
        "in_channels", "in_chans", "num_classes", "num_features", "head_hidden_size", "feature_info", "default_cfg"
    )  # fmt: skip
    __jit_ignored_attributes__ = ("pretrained_cfg",)  # timm's description of the expected input (a dict of Any)

    def __init__(
        self,
        features: nn.Module,
        num_classes: int = 1000,
        init_weights: bool = True,
        dropout: float = 0.5,
        head: str = "vgg",
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        check_choice("head", head, HEADS)
        _check_global_pool(global_pool, num_classes)
        self.head = head
        self.global_pool = global_pool
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1 if head == "gap" else (POOLED_SIZE, POOLED_SIZE))
        # typed Module: users may put any module here (torchvision's nn.Identity()); no annotation, which TorchScript
        # would warn about
        self.classifier = cast(
            nn.Module,
            nn.Sequential(_fc8(512, num_classes))
            if head == "gap"
            else nn.Sequential(
                nn.Linear(512 * POOLED_SIZE * POOLED_SIZE, HIDDEN),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                _fc8(HIDDEN, num_classes),
            ),
        )
        self.grad_checkpointing = False
        self._frozen = 0  # number of leading taps frozen by `freeze`
        if init_weights:
            for m in self.modules():
                init_module(m)
        self.pretrained_cfg = pretrained_cfg(None, num_classes, head)  # the builders put their checkpoint's

    @property
    def in_channels(self) -> int:
        """Channels the first convolution expects."""
        first = next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))
        return first.in_channels

    @property
    def in_chans(self) -> int:
        """timm's name of `in_channels`."""
        return self.in_channels

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier's last Linear; 0 when the classifier ends with an Identity or is empty.

        0 means no fc8: the model returns the pre-logits features (relu7's 4096 for the vgg head).
        """
        modules = _modules_of(self.classifier)
        linears = [m for m in modules if isinstance(m, nn.Linear)]
        if not modules or isinstance(modules[-1], nn.Identity) or not linears:
            return 0
        return linears[-1].out_features

    @property
    def num_features(self) -> int:
        """Channels of `forward_features`' output (timm's name): 512 (fewer after `prune_intermediate_layers`)."""
        return [m for m in self.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    @property
    def head_hidden_size(self) -> int:
        """Width of the pre-logits vector `forward_head(pre_logits=True)` returns (timm's name).

        4096 for the vgg head, 512 for the gap head; `num_features` without pooling (global_pool="").
        """
        return self.num_features if self.global_pool == "" else self._pre_logits_width()

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's stage list: the ReLU before each max-pool, then pool5; `num_chs`, `reduction`, `module`.

        The `module` entries are state-dict / torchvision node names (`features.3`); these are the taps
        `VGGFeatures` (the builders' `features_only=True`) and `forward_intermediates` return.
        """
        info: list[dict[str, Any]] = []
        channels, stride = self.in_channels, 1
        layers = list(self.features.children())
        for i, m in enumerate(layers):
            if isinstance(m, nn.Conv2d):
                channels = m.out_channels
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                info.append({"num_chs": channels, "reduction": stride, "module": f"features.{i - 1}"})
                stride *= m.stride if isinstance(m.stride, int) else m.stride[0]
        if not info or info[-1]["module"] != f"features.{len(layers) - 1}":  # pruned at a ReLU: it is the last
            info.append({"num_chs": channels, "reduction": stride, "module": f"features.{len(layers) - 1}"})
        return info

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of `pretrained_cfg`; settable, as timm's `build_model_with_cfg` sets it."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict[str, Any]) -> None:
        self.pretrained_cfg = cfg

    def get_classifier(self) -> nn.Linear:
        """The last Linear layer (fc8; fc for the gap head).

        Returns:
            The Linear that gives the logits.

        Raises:
            UsageTypeError: the model has no fc8 (num_classes=0) or its classifier ends with another module.
        """
        modules = _modules_of(self.classifier)
        fc8 = modules[-1] if modules else None
        if fc8 is None or isinstance(fc8, nn.Identity):
            raise UsageTypeError("the model has no fc8 (num_classes=0); add one with reset_classifier(num_classes)")
        if not isinstance(fc8, nn.Linear):
            raise UsageTypeError(f"the classifier ends with a {type(fc8).__name__}, expected the nn.Linear fc8")
        return fc8

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming what was received and what is needed, before any layer runs.

        Args:
            x: the batch a forward would get.

        Raises:
            UsageError: not an (N, in_channels, H, W) batch, or a side under 32 pixels (a ValueError).
        """
        check_images(x, self.in_channels)
        if min(x.shape[2], x.shape[3]) < MIN_SIZE:
            raise UsageError(
                f"VGG needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (five 2x2 max-pools), "
                f"got {x.shape[2]}x{x.shape[3]}; resize the input first"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output after pool5: (N, 512, H/32, W/32).

        Args:
            x: an (N, in_channels, H, W) batch, sides of at least 32 pixels.

        Returns:
            pool5's map.
        """
        if not is_scripting():
            if _eager():
                self.check_input(x)
            # Scripted and FX-traced models run the blocks plainly: same outputs and gradients, more memory.
            if self.grad_checkpointing and torch.is_grad_enabled() and not is_fx_symbolic_tracing():
                return self._checkpointed_features(x)
        out: torch.Tensor = self.features(x)
        return out

    @torch.jit.unused
    def _checkpointed_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self._blocks():
            # Non-reentrant checkpointing recomputes the block in backward; the recomputation must not
            # update BatchNorm's running statistics a second time.
            x = checkpoint(block, x, use_reentrant=False, **_recompute_options(block))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classifier on a `forward_features` map; `pre_logits` stops before fc8: relu7's (N, 4096).

        With `head="gap"`, `pre_logits` gives the pooled (N, 512) features; with global_pool="" the map
        comes back as it is. TorchScript runs the classifier, not `pre_logits` (it reads the modules by type).

        Args:
            x: pool5's (N, 512, H/32, W/32) map.
            pre_logits: stop before the last layer (fc8, or the gap head's fc).

        Returns:
            The logits (N, num_classes), the pre-logits features, or the map itself without pooling.
        """
        if self.global_pool == "":
            return x  # no pooling, no classifier: pool5's (N, 512, H/32, W/32) map, as timm's global_pool=""
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (N, 512, 7, 7) -> (N, 25088); gap: (N, 512, 1, 1) -> (N, 512)
        if pre_logits:
            return self._pre_logits(x)
        logits: torch.Tensor = self.classifier(x)  # any classifier, e.g. the nn.Identity torchvision users put there
        return logits

    @torch.jit.unused
    def _pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        for layer in _modules_of(self.classifier)[:-1]:  # a bare module (no Sequential) is fc8 itself
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a batch: `forward_head(forward_features(x))`.

        Args:
            x: an (N, in_channels, H, W) batch, sides of at least 32 pixels.

        Returns:
            (N, num_classes) logits; the pre-logits features with num_classes=0; pool5's map with global_pool="".
        """
        return self.forward_head(self.forward_features(x))

    # --- named taps ------------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """Every tap name in order: conv1_1, [bn1_1,] relu1_1, ..., pool5, then the head's (see `taps.head_layers`).

        The vgg head: avgpool, fc6, relu6, drop6, fc7, relu7, drop7, fc8 (no fc8 with num_classes=0); the
        gap head: gap, fc; a classifier of the user's: "classifier" or "classifier.0", "classifier.1", ...

        Returns:
            The names, in the order the forward runs them.
        """
        return layer_names(self)

    def extract(self, x: torch.Tensor, layers: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """The outputs of the named layers, in the order asked; nothing after the last one is computed.

        A single name is a list of one: `extract(x, "fc7")` returns `{"fc7": ...}`, a dict as always.

        A tap that the next layer's in-place ReLU would overwrite (conv4_3, bn4_3, fc6, ...; Identity
        steps left by `fold_batchnorm` are looked past) is cloned when taken, so it holds the
        pre-activation values.

        Args:
            x: an (N, in_channels, H, W) batch, sides of at least 32 pixels.
            layers: a name of `layer_names()`, or several.

        Returns:
            name -> that layer's output, in the order asked.

        Raises:
            UsageError: a bad batch, or a name that is no layer (the valid ones listed).
        """
        self.check_input(x)
        return run_taps(tap_steps(self), x, layers)

    def tap_info(self) -> list[TapInfo]:
        """Channels, stride and receptive field (in input pixels) of every tap, computed from the layers.

        The taps after pool5 see the whole (adaptively pooled) image: their stride and receptive field are None.

        Returns:
            One `TapInfo` per name of `layer_names()`, in order.
        """
        return tap_info(self)

    def _blocks(self) -> list[nn.Sequential]:
        """`features` cut after every pool: the five conv blocks."""
        layers = self._layers()
        blocks, start = [], 0
        for i, m in enumerate(layers):
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                blocks.append(layers[start : i + 1])
                start = i + 1
        if start < len(layers):
            blocks.append(layers[start:])
        return blocks

    def _layers(self) -> nn.Sequential:
        return feature_layers(self.features)

    # --- new heads ------------------------------------------------------------------------------

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace fc8 by a freshly initialised Linear(width, num_classes) (torchvision's N(0, 0.01) init).

        fc8 is the classifier's last layer, a Linear or an Identity (for a bare Linear or Identity
        classifier, the classifier itself); `width` is what reaches it: 4096 for the vgg head, 512 for
        the gap head. Every other tensor is kept; the new layer gets the model's device and dtype.

        Args:
            num_classes: outputs of the new fc8; 0 removes it (an `nn.Identity`): the model then returns
                the pre-logits features, (N, 4096) relu7 for the vgg head, as timm's does.
            global_pool: "avg" (pool, as built) or "" (no pooling: the model returns pool5's map; only with
                num_classes=0); None keeps the current one. A classifier needs the pool, so
                reset_classifier(n > 0) on a model without pooling puts "avg" back (logged at INFO).

        Raises:
            UsageError: a bad num_classes or global_pool (a ValueError).
            UsageTypeError: a classifier that does not end with a Linear or an Identity (a TypeError).
        """
        _check_num_classes(num_classes)
        pool = self.global_pool if global_pool is None else global_pool
        if global_pool is not None:
            _check_global_pool(global_pool, num_classes)
        elif pool == "" and num_classes:
            logger.info("reset_classifier(%d): a classifier needs the pool, global_pool is 'avg' again", num_classes)
            pool = "avg"
        modules = _modules_of(self.classifier)
        width = self._pre_logits_width() if num_classes else 0
        ref = next(self.parameters())
        fc8 = _fc8(width, num_classes, device=ref.device, dtype=ref.dtype)
        init_module(fc8)
        fc8.train(self.training)
        classifier = self.classifier
        if isinstance(classifier, nn.Sequential) and modules:
            classifier[len(modules) - 1] = fc8
        elif isinstance(classifier, nn.Sequential):
            classifier.append(fc8)
        else:
            self.classifier = fc8
        self.global_pool = pool

    def _pre_logits_width(self) -> int:
        """Width of what reaches fc8: the Linear's in_features, else the last Linear's outputs or the pool's."""
        modules = _modules_of(self.classifier)
        last = modules[-1] if modules else None
        if isinstance(last, nn.Linear):
            return last.in_features
        if last is not None and not isinstance(last, nn.Identity):
            raise UsageTypeError(
                f"the classifier ends with a {type(last).__name__}, not a Linear or Identity: "
                "set model.classifier yourself, e.g. to nn.Linear(in_features, num_classes)"
            )
        linears = [m for m in modules if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else self.num_features * pool_cells(self.avgpool)

    # --- timm's intermediate features ---------------------------------------------------------------

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage outputs of `feature_info` with the final map, timm's signature and return.

        The stages: index 0-4 the ReLU before each max-pool, index 5 pool5.

        Args:
            x: an (N, C, H, W) batch.
            indices: the last n stages for an int, these stages for a list (negative from the end), all for None.
            norm: timm's option; VGG has no final norm, so it changes nothing.
            stop_early: stop after the last stage asked for (the first returned tensor is then that stage's).
            output_fmt: "NCHW", the only layout.
            intermediates_only: return the list of stage outputs alone.

        Returns:
            (forward_features' output, [stage outputs]) or, with intermediates_only, the list.

        Raises:
            UsageError: an output_fmt other than "NCHW", bad indices, or a bad batch.
        """
        if output_fmt != "NCHW":
            raise UsageError(f"output_fmt must be 'NCHW' (VGG's only layout), got {output_fmt!r}")
        if _eager():
            self.check_input(x)
        ends = self._stage_ends()
        wanted = {ends[i] for i in take_indices(indices, len(ends))}
        layers = self._layers()
        last = max(wanted) if stop_early else len(layers) - 1
        intermediates = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in wanted:  # a ReLU before a pool, or pool5: nothing later overwrites it in place
                intermediates.append(x)
            if i == last:
                break
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers `forward_intermediates(indices=...)` does not need (timm's method).

        `features` ends at the last stage kept; `prune_head` (or a cut before pool5) removes the pool and
        the classifier: the model then returns its last stage's map (global_pool "", num_classes 0).

        Args:
            indices: the stages to keep, as `forward_intermediates` takes them.
            prune_norm: timm's option; VGG has no final norm, so it changes nothing.
            prune_head: remove the pool and the classifier.

        Returns:
            The kept stage indices.
        """
        ends = self._stage_ends()
        kept = take_indices(indices, len(ends))
        cut = max(kept) < len(ends) - 1
        self.features = self._layers()[: ends[max(kept)] + 1]  # the same modules: keys stay features.N
        if prune_head or cut:
            self.classifier = nn.Sequential()
            self.global_pool = ""
        return kept

    def _stage_ends(self) -> list[int]:
        return [int(d["module"].split(".")[1]) for d in self.feature_info]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups (layer-wise decay, `timm.optim`): regexes over the state-dict keys.

        Fine (timm's VGG): the first convolution, then one group per layer of `features`; coarse: block 1,
        then one group per conv block (the groups of `param_groups`). The classifier is the last group.

        Args:
            coarse: one group per conv block instead of one per layer.

        Returns:
            timm's matcher: {"stem": regex, "blocks": regex or [(regex, (index,)), ...]}.
        """
        if not coarse:
            return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}
        index = {id(m): i for i, m in enumerate(self._layers())}
        blocks = [sorted(index[id(m)] for m in block) for block in self._blocks()]
        pattern = [rf"^features\.(?:{'|'.join(map(str, block))})\." for block in blocks]
        return {"stem": pattern[0], "blocks": [(p, (k,)) for k, p in enumerate(pattern[1:])]}

    # --- training helpers -----------------------------------------------------------------------

    def freeze(self, upto: str | None = None) -> None:
        """Freeze every layer before the tap named `upto` (like slicing `[:upto]`); None: all of `features`.

        `freeze(upto="conv4_1")` trains conv4_1 onwards; `freeze(upto="fc8")` trains only fc8 (a linear
        probe; "fc" with the gap head). Frozen parameters get requires_grad=False, and the frozen part runs
        as in inference whatever `train()` is called with: its BatchNorm layers keep using (and no longer
        update) their running statistics, its dropouts are off. `freeze` replaces an earlier call;
        `unfreeze` undoes it. Any head: the names are `layer_names()`'.

        Args:
            upto: the first layer left trainable, a name of `layer_names()`; None: freeze all of `features`.

        Raises:
            UsageError: a name that is no layer (the valid ones listed).
        """
        steps = tap_steps(self)
        names = [name for name, _ in steps]
        if upto is None:
            stop = len(self._layers())
        elif upto in names:
            stop = names.index(upto)
            if stop and isinstance(steps[stop - 1][1][-1], nn.Dropout):
                stop -= 1  # a dropout trains with the Linear after it: freeze(upto="fc8") keeps drop7 on
        else:
            raise UsageError(f"unknown layer {upto!r}; valid: {', '.join(names)}")
        self.unfreeze()
        self._frozen = stop
        for p in self._frozen_part().parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def unfreeze(self) -> None:
        """Make every parameter trainable again and let `train()` reach every layer."""
        self._frozen = 0
        for p in self.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "VGG":
        super().train(mode)
        if mode and self._frozen:  # only a frozen model needs the tap table (and a make_layers `features`)
            self._frozen_part().eval()
        return self

    def _frozen_part(self) -> nn.ModuleList:
        modules = [m for _, step in tap_steps(self)[: self._frozen] for m in step if isinstance(m, nn.Module)]
        return nn.ModuleList(modules)

    def param_groups(self, lr: float, decay: float = 1.0, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups per block with layer-wise learning rates.

        Six groups, "block1" ... "block5" (the conv blocks) and "classifier" (fc6-fc8, the gap head's fc or
        a classifier of the user's); the classifier gets `lr`, each block below the previous one's times
        `decay` (block k: lr * decay ** (6 - k)). Frozen parameters and empty groups are left out. Each group
        is a dict with "name", "params", "lr" and "weight_decay", ready for
        `torch.optim.SGD(model.param_groups(0.01, decay=0.5))`.

        Args:
            lr: the classifier's learning rate.
            decay: the factor from one group to the block below it.
            weight_decay: every group's weight decay.

        Returns:
            The groups, block1 first.
        """
        parts = [*self._blocks(), self.classifier]
        groups = []
        for k, part in enumerate(parts, start=1):
            params = [p for p in part.parameters() if p.requires_grad]
            if params:
                name = "classifier" if part is self.classifier else f"block{k}"
                groups.append(
                    {"name": name, "params": params, "lr": lr * decay ** (len(parts) - k), "weight_decay": weight_decay}
                )
        return groups

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each conv block's activations in backward instead of storing them (same gradients).

        Applies to `forward`/`forward_features` while gradients are enabled; BatchNorm running
        statistics are updated once per step, as without checkpointing.

        Args:
            enable: on (True) or off.
        """
        self.grad_checkpointing = enable


class FeatureInfo(list[dict[str, Any]]):
    """timm's `feature_info` of a features-only model: the chosen stages' dicts, and their columns."""

    def channels(self) -> list[int]:
        return [int(d["num_chs"]) for d in self]

    def reduction(self) -> list[int]:
        return [int(d["reduction"]) for d in self]

    def module_name(self) -> list[str]:
        return [str(d["module"]) for d in self]


class VGGFeatures(nn.Module):
    """A VGG's `features` returning a list of stage outputs: timm's `features_only=True` model.

    The stages are timm's for VGG (`VGG.feature_info`): index 0-4 the ReLU before each max-pool
    (relu1_1 or relu1_2, ..., relu5_3 or relu5_4; strides 1 to 16), index 5 pool5 (stride 32).
    `out_indices` picks some of them (default all six, as timm); the layers after the last one
    picked are dropped. State-dict keys stay `features.N`.

    Args:
        model: the VGG whose `features` it takes (shared, not copied).
        out_indices: the stages to return, 0-5 (negative from the end); None: all six.

    Raises:
        UsageError: bad out_indices (a ValueError).
    """

    def __init__(self, model: VGG, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        info = model.feature_info
        picked = stage_indices(out_indices, len(info))
        self.ends: list[int] = [int(info[i]["module"].split(".")[1]) for i in picked]
        self.features = nn.Sequential(*list(model.features.children())[: self.ends[-1] + 1])  # keys stay features.N
        self.feature_info = FeatureInfo(info[i] for i in picked)
        self.pretrained_cfg = model.pretrained_cfg
        self._in_channels = model.in_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The chosen stages' outputs.

        Args:
            x: an (N, in_channels, H, W) batch.

        Returns:
            One (N, C, H / stride, W / stride) map per stage of `feature_info`, in order.
        """
        if not is_scripting():  # TorchScript drops this block, unseen, only when the test stands alone
            self._check_input(x)
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.ends:  # a ReLU before a pool, or pool5: nothing later overwrites it in place
                outs.append(x)
        return outs

    def _check_input(self, x: torch.Tensor) -> None:
        if _eager():
            check_images(x, self._in_channels, who="VGGFeatures")


def stage_indices(out_indices: Sequence[int] | None, stages: int = 6) -> list[int]:
    """`out_indices` checked and made sorted and non-negative (None: all); ValueError naming the valid range."""
    picked = list(range(stages)) if out_indices is None else list(out_indices)
    bad = [i for i in picked if not is_int(i, least=-stages, most=stages - 1)]
    if not picked or bad:
        raise UsageError(
            f"out_indices must be stage indices 0-{stages - 1} (the ReLU before pool1-pool5, then pool5), "
            f"got {out_indices!r}"
        )
    return sorted({i % stages for i in picked})


def take_indices(indices: int | Sequence[int] | None, stages: int) -> list[int]:
    """timm's `indices` of `forward_intermediates`: the last n stages for an int n, these (sorted) for a list.

    Args:
        indices: a number of stages, a list of stage indices (negative from the end), or None (all).
        stages: how many stages there are.

    Returns:
        The stage indices, sorted and non-negative.

    Raises:
        UsageError: a number out of 1-stages, or an index out of range (a ValueError).
    """
    if isinstance(indices, bool) or not isinstance(indices, int):
        return stage_indices([indices] if isinstance(indices, bool) else indices, stages)
    if not 1 <= indices <= stages:
        raise UsageError(f"indices must be a number of stages 1-{stages} or a list of stage indices, got {indices}")
    return list(range(stages - indices, stages))


def check_images(x: torch.Tensor, in_channels: int, who: str = "VGG") -> None:
    """Raise a ValueError, naming the shape received and the fix, unless `x` is an (N, in_channels, H, W) batch."""
    if x.dim() != 4:
        raise UsageError(
            f"{who} expects a 4-D batch (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != in_channels:
        hint = "; gray images: x.expand(-1, 3, -1, -1), RGBA: x[:, :3]" if in_channels == 3 else ""
        raise UsageError(f"{who} expects {in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}){hint}")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A pretrained first-conv weight (O, 3, k, k) rewritten for `in_chans` input channels.

    - 1: the sum over R, G, B, so a gray image x gives exactly what its copy x.expand(3) gave.
    - 2: both channels get half that sum, so an input whose two channels are equal answers like the
      same gray image through the 1-channel adaptation (colour cannot be mapped onto two channels).
    - N > 3: R, G, B repeated cyclically and scaled by 3/N, so the response to N equal channels stays
      that of the RGB network (exactly when N is a multiple of 3).

    Args:
        weight: the (O, 3, k, k) weight.
        in_chans: the input channels wanted, 1 or more.

    Returns:
        The (O, in_chans, k, k) weight (`weight` itself for 3).

    Raises:
        UsageError: a weight that is not (O, 3, k, k), or a bad in_chans.
    """
    if weight.dim() != 4 or weight.shape[1] != IN_CHANNELS:
        raise UsageError(f"expected a first-conv weight (O, 3, k, k), got shape {tuple(weight.shape)}")
    check_int("in_chans", in_chans)
    gray = weight.sum(dim=1, keepdim=True)
    if in_chans == IN_CHANNELS:
        return weight
    if in_chans == 1:
        return gray
    if in_chans == 2:
        return (gray / 2).expand(-1, 2, -1, -1).contiguous()
    repeats = -(-in_chans // IN_CHANNELS)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (IN_CHANNELS / in_chans)


NUM_CLASSES_MEANS = "the outputs of fc8, e.g. 10 for ten classes; 0 for no fc8"


def _check_num_classes(num_classes: int) -> None:
    check_int("num_classes", num_classes, least=0, what=NUM_CLASSES_MEANS)


def _check_global_pool(global_pool: str, num_classes: int) -> None:
    check_choice("global_pool", global_pool, GLOBAL_POOLS, quote=True)
    if global_pool == "" and num_classes:
        raise UsageError(
            f"global_pool='' (no pooling) returns the feature map, which no classifier can take: "
            f"pass num_classes=0 with it, or global_pool='avg' for num_classes={num_classes}"
        )


def _modules_of(classifier: nn.Module) -> list[nn.Module]:
    """A Sequential's modules; any other classifier is a list of one."""
    return list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]


def _fc8(in_features: int, num_classes: int, **device_dtype: Any) -> nn.Module:
    """Linear(in_features, num_classes), or an Identity for num_classes=0 (timm's headless model)."""
    return nn.Linear(in_features, num_classes, **device_dtype) if num_classes else nn.Identity()


def _eager() -> bool:
    """False while FX-tracing, exporting or compiling (is_compiling covers export): shape checks do not trace."""
    return not (torch.compiler.is_compiling() or is_fx_symbolic_tracing())


def _recompute_options(block: nn.Module) -> dict[str, Any]:
    """`checkpoint`'s context_fn keeping BatchNorm statistics, in eager mode only.

    Compiled, the recomputation is the partitioner's and reruns no buffer update; a context_fn bound to
    the block would also break the graph (Dynamo needs it to be a constant), issue 25.
    """
    if torch.compiler.is_compiling():
        return {}
    return {"context_fn": partial(_recompute_contexts, block)}


def _recompute_contexts(
    block: nn.Module,
) -> tuple[contextlib.nullcontext[None], contextlib.AbstractContextManager[None]]:
    return contextlib.nullcontext(), _keep_bn_stats(block)


@contextlib.contextmanager
def _keep_bn_stats(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm buffers of `module` on exit (what a checkpoint's recomputation changed)."""
    saved = [(b, b.clone()) for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def init_module(m: nn.Module) -> None:
    """torchvision's VGG initialisation for one module (conv kaiming fan_out, BN 1/0, Linear N(0, 0.01))."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.constant_(m.bias, 0)
