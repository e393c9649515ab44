"""The VGG network: `make_layers` turns a row of the paper's table into `features`, `VGG` adds the head.

Module creation order and initialisation calls follow torchvision's `vgg.py` exactly, so under the
same `torch.manual_seed` a fresh model holds bit-for-bit the parameters torchvision's would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import HIDDEN, IN_CHANNELS, MIN_SIZE, POOLED_SIZE, Layer

__all__ = ["VGG", "make_layers"]


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
    `classifier.{0,3,6}.*`.
    """

    def __init__(
        self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((POOLED_SIZE, POOLED_SIZE))
        self.classifier = nn.Sequential(
            nn.Linear(512 * POOLED_SIZE * POOLED_SIZE, HIDDEN),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(HIDDEN, num_classes),
        )
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
        if x.dim() != 4:
            raise ValueError(
                f"VGG expects a 4-D batch (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) for a single image"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"VGG expects {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if min(x.shape[2], x.shape[3]) < MIN_SIZE:
            raise ValueError(
                f"VGG needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (five 2x2 max-pools), "
                f"got {x.shape[2]}x{x.shape[3]}; resize the input first"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output after pool5: (N, 512, H/32, W/32)."""
        self.check_input(x)
        out: torch.Tensor = self.features(x)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Adaptive pool and classifier on a `forward_features` map; `pre_logits` stops at fc7 (N, 4096)."""
        x = self.avgpool(x)
        x = torch.flatten(x, 1)  # (N, 512, 7, 7) -> (N, 25088)
        out: torch.Tensor = self.classifier[:-1](x) if pre_logits else self.classifier(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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
