"""What a layer responds to: its strongest feature maps for one image, as a labelled grid of tiles.

"Strongest" is the largest mean activation over the map. Each tile is one channel, scaled from its
own minimum (dark blue in the jet colour map) to its own maximum (dark red), enlarged without
smoothing so the layer's true resolution stays visible, and labelled with its channel number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vggnet.checks import check_int
from vggnet.errors import UsageError
from vggnet.models.vgg import VGG
from vggnet.seeing.explain import last_conv
from vggnet.seeing.pictures import jet, tile_grid, to_image

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["FeatureMaps", "feature_maps"]


@dataclass(frozen=True)
class FeatureMaps:
    """The `count` strongest channels of one layer for one image, strongest first, and their grid.

    Attributes:
        layer: the layer's name.
        channels: the channel numbers, strongest first.
        means: each channel's mean activation.
        maps: (count, h, w): the channels' maps, as the layer produced them.
    """

    layer: str
    channels: list[int]
    means: list[float]
    maps: torch.Tensor

    def grid(self, tile: int = 96, columns: int | None = None) -> Image:
        """The maps as `tile` x `tile` px tiles in rows of `columns` (default near-square), each labelled "#channel".

        Args:
            tile: a tile's side in pixels, at least 16 (the maps are enlarged without smoothing).
            columns: tiles per row; default a near-square grid.

        Returns:
            An RGB PIL image.
        """
        check_int("tile", tile, least=16, what="pixels per tile side")
        tiles = []
        for m in self.maps.float():
            low, high = m.min(), m.max()
            scaled = (m - low) / (high - low) if high > low else torch.zeros_like(m)
            big = F.interpolate(scaled[None, None], size=(tile, tile), mode="nearest")[0, 0]
            tiles.append(to_image(jet(big)))
        return tile_grid(tiles, [f"#{c}" for c in self.channels], columns)


def feature_maps(model: VGG, image: torch.Tensor, layer: str | None = None, count: int = 16) -> FeatureMaps:
    """The `count` channels of `layer` with the largest mean activation for one preprocessed image.

    The model runs in eval mode for the call and is left in the mode it had.

    Args:
        model: a vggnet VGG.
        image: (3, H, W) or (1, 3, H, W), normalized as the model's weights expect.
        layer: any named tap with a spatial output (conv1_1 ... pool5; see `model.layer_names()`); default
            the last convolution of block 3 (conv3_3 in vgg16): textures and parts.
        count: how many channels to keep.

    Returns:
        The strongest channels' maps and means.

    Raises:
        UsageError: more than one image, or a layer without spatial maps (fc6 onwards).
    """
    layer = layer or last_conv(model, block=3)
    check_int("count", count, what="feature maps to show")
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise UsageError(f"feature_maps shows one image: give (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    was_training = model.training
    model.eval()  # BatchNorm with its running statistics, as in inference
    try:
        with torch.no_grad():
            out = model.extract(x, [layer])[layer]
    finally:
        model.train(was_training)
    if out.dim() != 4:
        raise UsageError(
            f"{layer} has no spatial maps (output {tuple(out.shape)}); choose a layer from conv1_1 to pool5"
        )
    maps = out[0].detach().cpu()  # (C, h, w)
    means = maps.float().mean(dim=(1, 2))
    strongest = means.argsort(descending=True, stable=True)[: min(count, maps.shape[0])]
    return FeatureMaps(layer, strongest.tolist(), means[strongest].tolist(), maps[strongest])
