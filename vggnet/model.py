"""The VGG network: `make_layers` turns a row of the paper's table into `features`, `VGG` adds the head.

Module creation order and initialisation calls follow torchvision's `vgg.py` exactly, so under the
same `torch.manual_seed` a fresh model holds bit-for-bit the parameters torchvision's would.

Beside the forward pass the network carries what fine-tuning and feature work need (issue 4):
named taps (`layer_names`, `extract`, `tap_info`), new heads (`reset_classifier`), freezing,
per-block learning rates (`param_groups`) and gradient checkpointing per conv block.

Tap names are the paper's (conv1_1, [bn1_1,] relu1_1, ..., pool5, avgpool, fc6, relu6, drop6, fc7,
relu7, drop7, fc8); `vggnet.taps` computes them and runs the taps, the methods here delegate to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .checks import check_int
from .config import HIDDEN, IN_CHANNELS, MIN_SIZE, POOLED_SIZE, Layer
from .taps import TapInfo, feature_layers, layer_names, run_taps, tap_info, tap_steps

__all__ = ["HEADS", "VGG", "TapInfo", "adapt_input_conv", "make_layers"]

# "vgg": fc6-fc8 on the 7x7 pool; "gap": a global average pool and one Linear(512, num_classes) (issue 17);
# "fc7": the vgg head, named for what `finetune` trains on it (fc8 alone, a linear probe on fc7 features)
HEADS = ("vgg", "gap", "fc7")


def make_layers(cfg: Sequence[Layer], batch_norm: bool = False, in_channels: int = IN_CHANNELS) -> nn.Sequential:
    """One flat Sequential: per number a 3x3 conv (+ BatchNorm) + in-place ReLU, per "M" a 2x2 max-pool."""
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
    """`features`, a 7x7 adaptive average pool, and the three fully connected layers fc6, fc7, fc8.

    State-dict keys are those of the official checkpoints: `features.N.*` and
    `classifier.{0,3,6}.*`. `head="gap"` replaces pool and classifier by a 1x1 average pool and
    `classifier.0`, one Linear(512, num_classes) (no named taps after pool5 then); see `HEADS`.
    """

    def __init__(
        self,
        features: nn.Module,
        num_classes: int = 1000,
        init_weights: bool = True,
        dropout: float = 0.5,
        head: str = "vgg",
    ) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head = head
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d(1 if head == "gap" else (POOLED_SIZE, POOLED_SIZE))
        self.classifier = (
            nn.Sequential(nn.Linear(512, num_classes))
            if head == "gap"
            else nn.Sequential(
                nn.Linear(512 * POOLED_SIZE * POOLED_SIZE, HIDDEN),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(HIDDEN, num_classes),
            )
        )
        self.grad_checkpointing = False
        self._frozen = 0  # number of leading taps frozen by `freeze`
        if init_weights:
            for m in self.modules():
                init_module(m)

    @property
    def in_channels(self) -> int:
        """Channels the first convolution expects."""
        first = next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))
        return first.in_channels

    @property
    def num_classes(self) -> int:
        return self.get_classifier().out_features

    def get_classifier(self) -> nn.Linear:
        """The last Linear layer (fc8)."""
        fc8 = self.classifier[-1]
        if not isinstance(fc8, nn.Linear):
            raise TypeError(f"classifier[-1] is a {type(fc8).__name__}, expected the nn.Linear fc8")
        return fc8

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming what was received and what is needed, before any layer runs."""
        check_images(x, self.in_channels)
        if min(x.shape[2], x.shape[3]) < MIN_SIZE:
            raise ValueError(
                f"VGG needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (five 2x2 max-pools), "
                f"got {x.shape[2]}x{x.shape[3]}; resize the input first"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output after pool5: (N, 512, H/32, W/32)."""
        self.check_input(x)
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            out: torch.Tensor = self.features(x)
            return out
        for block in self._blocks():
            # Non-reentrant checkpointing recomputes the block in backward; the recomputation must not
            # update BatchNorm's running statistics a second time.
            x = checkpoint(block, x, use_reentrant=False, context_fn=partial(_recompute_contexts, block))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Adaptive pool and classifier on a `forward_features` map; `pre_logits` stops at fc7 (N, 4096).

        With `head="gap"`, `pre_logits` gives the pooled (N, 512) features.
        """
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (N, 512, 7, 7) -> (N, 25088); gap: (N, 512, 1, 1) -> (N, 512)
        out: torch.Tensor = self.classifier[:-1](x) if pre_logits else self.classifier(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- named taps ------------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """Every tap name in order: conv1_1, [bn1_1,] relu1_1, ..., pool5, avgpool, fc6, relu6, drop6, ..., fc8."""
        return layer_names(self)

    def extract(self, x: torch.Tensor, layers: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """The outputs of the named layers, in the order asked; nothing after the last one is computed.

        A single name is a list of one: `extract(x, "fc7")` returns `{"fc7": ...}`, a dict as always.

        A tap that the next layer's in-place ReLU would overwrite (conv4_3, bn4_3, fc6, ...; Identity
        steps left by `fold_batchnorm` are looked past) is cloned when taken, so it holds the
        pre-activation values.
        """
        self.check_input(x)
        return run_taps(tap_steps(self), x, layers)

    def tap_info(self) -> list[TapInfo]:
        """Channels, stride and receptive field (in input pixels) of every tap, computed from the layers.

        avgpool onwards see the whole (adaptively pooled) image: their stride and receptive field are None.
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

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc8 by a freshly initialised Linear(4096, num_classes) (torchvision's N(0, 0.01) init).

        Every other tensor, and fc8's device and dtype, are kept.
        """
        _check_num_classes(num_classes)
        old = self.get_classifier()
        fc8 = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        init_module(fc8)
        self.classifier[-1] = fc8

    # --- training helpers -----------------------------------------------------------------------

    def freeze(self, upto: str | None = None) -> None:
        """Freeze every layer before the tap named `upto` (like slicing `[:upto]`); None: all of `features`.

        `freeze(upto="conv4_1")` trains conv4_1 onwards; `freeze(upto="fc8")` trains only fc8 (a linear
        probe). Frozen parameters get requires_grad=False, and the frozen part runs as in inference
        whatever `train()` is called with: its BatchNorm layers keep using (and no longer update) their
        running statistics, its dropouts are off. `freeze` replaces an earlier call; `unfreeze` undoes it.
        """
        names = self.layer_names()
        if upto is None:
            stop = len(self._layers())
        elif upto in names:
            stop = names.index(upto)
            if stop and names[stop - 1].startswith("drop"):
                stop -= 1  # a dropout trains with the Linear after it: freeze(upto="fc8") keeps drop7 on
        else:
            raise ValueError(f"unknown layer {upto!r}; valid: {', '.join(names)}")
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

    def train(self, mode: bool = True) -> VGG:
        super().train(mode)
        if mode and self._frozen:  # only a frozen model needs the tap table (and a make_layers `features`)
            self._frozen_part().eval()
        return self

    def _frozen_part(self) -> nn.ModuleList:
        modules = [m for _, step in tap_steps(self)[: self._frozen] for m in step if isinstance(m, nn.Module)]
        return nn.ModuleList(modules)

    def param_groups(self, lr: float, decay: float = 1.0, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups per block with layer-wise learning rates.

        Six groups, "block1" ... "block5" (the conv blocks) and "classifier" (fc6-fc8); the classifier
        gets `lr`, each block below the previous one's times `decay` (block k: lr * decay ** (6 - k)).
        Frozen parameters and empty groups are left out. Each group is a dict with "name", "params",
        "lr" and "weight_decay", ready for `torch.optim.SGD(model.param_groups(0.01, decay=0.5))`.
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
        """
        self.grad_checkpointing = enable


def check_images(x: torch.Tensor, in_channels: int, who: str = "VGG") -> None:
    """Raise a ValueError, naming the shape received and the fix, unless `x` is an (N, in_channels, H, W) batch."""
    if x.dim() != 4:
        raise ValueError(
            f"{who} expects a 4-D batch (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != in_channels:
        hint = "; gray images: x.expand(-1, 3, -1, -1), RGBA: x[:, :3]" if in_channels == 3 else ""
        raise ValueError(f"{who} expects {in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}){hint}")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A pretrained first-conv weight (O, 3, k, k) rewritten for `in_chans` input channels.

    - 1: the sum over R, G, B, so a gray image x gives exactly what its copy x.expand(3) gave.
    - 2: both channels get half that sum, so an input whose two channels are equal answers like the
      same gray image through the 1-channel adaptation (colour cannot be mapped onto two channels).
    - N > 3: R, G, B repeated cyclically and scaled by 3/N, so the response to N equal channels stays
      that of the RGB network (exactly when N is a multiple of 3).
    """
    if weight.dim() != 4 or weight.shape[1] != IN_CHANNELS:
        raise ValueError(f"expected a first-conv weight (O, 3, k, k), got shape {tuple(weight.shape)}")
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


NUM_CLASSES_MEANS = "the outputs of fc8, e.g. 10 for ten classes"


def _check_num_classes(num_classes: int) -> None:
    check_int("num_classes", num_classes, what=NUM_CLASSES_MEANS)


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
