"""Receptive fields: how many input pixels each unit of every convolutional layer sees, and where.

The standard recurrence over the layers (Araujo et al., "Computing receptive fields of convolutional
neural networks", Distill 2019), for a layer of kernel k, stride s, padding p and dilation d:

    size  = size_in + (d * (k - 1)) * jump_in         # the field's side in input pixels
    jump  = jump_in * s                               # input pixels between neighbouring units
    start = start_in + ((d * (k - 1)) / 2 - p) * jump_in

`start` is the input coordinate of the centre of unit 0's field, in pixel indices (pixel 0's centre
is 0), so unit i of a layer looks at the `size` x `size` square centred on `start + i * jump`.
Unpadded 2x2 pools move it by half a step: VGG's pool5 units are centred on 15.5 + 32 * i. The
field is the geometric one: a unit near the border sees part of it as zero padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vggnet.models.config import arch_config
from vggnet.models.taps import feature_layers, feature_names, field_geometry
from vggnet.models.vgg import VGG, make_layers

__all__ = ["ReceptiveField", "receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    """One layer of `features`: its field's side, the jump (effective stride) and unit 0's centre, in input pixels.

    Attributes:
        name: the layer's paper name (conv1_1 ... pool5).
        size: the side of the input square one unit sees.
        jump: input pixels between neighbouring units (the effective stride).
        start: the input coordinate of unit 0's centre (pixel 0's centre is 0).
    """

    name: str
    size: int
    jump: int
    start: float


def receptive_fields(model: VGG | str) -> list[ReceptiveField]:
    """The receptive field of every layer of `features` (conv1_1 ... pool5), from a model or a builder name.

    fc6 onwards are left out: the adaptive pool gives them the whole image.

    Args:
        model: a vggnet VGG, or a builder name such as "vgg16" (nothing is built but on the meta device).

    Returns:
        One record per layer of `features`, in order.
    """
    if isinstance(model, str):
        row, batch_norm = arch_config(model)  # an unknown name raises the ValueError listing the valid ones
        with torch.device("meta"):
            features = make_layers(row, batch_norm)
    else:
        features = feature_layers(model.features)
    names = feature_names(features)
    return [ReceptiveField(name, *geometry) for name, geometry in zip(names, field_geometry(list(features), names))]
