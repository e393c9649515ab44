"""Turning maps into pictures a person can look at: a colour map, heat-map overlays, labelled tile grids.

Only Pillow is needed (the `image` extra), no matplotlib. The colour map is "jet" (MATLAB's, the
usual one for class-activation maps): dark blue (0) - blue - cyan - yellow - red - dark red (1),
three piecewise-linear ramps, each channel min(1, max(0, 1.5 - |4 v - c|)) with c = 3, 2, 1 for red,
green and blue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from vggnet.data.decode import pil_to_tensor
from vggnet.errors import MissingDependency, UsageError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["jet", "label", "overlay", "tile_grid", "to_image"]

FONT_SIZE = 12
_JET_CENTRES = (3.0, 2.0, 1.0)  # red, green, blue ramps peak at v = 3/4, 1/2, 1/4


def _pil() -> Any:
    try:
        import PIL.Image
        import PIL.ImageDraw
        import PIL.ImageFont
    except ImportError as err:
        raise MissingDependency("drawing pictures needs Pillow: pip install 'vggnet[image]'") from err
    return PIL


def jet(values: torch.Tensor) -> torch.Tensor:
    """(...) values in [0, 1] (clipped) -> (..., 3) RGB in [0, 1] by the jet colour map.

    Dark blue - cyan - yellow - dark red, as three linear ramps: no matplotlib needed.

    Args:
        values: a tensor of any shape; values outside [0, 1] are clipped.

    Returns:
        The colours, one more dimension of 3 at the end.
    """
    v = values.float().clamp(0, 1).unsqueeze(-1)
    centres = torch.tensor(_JET_CENTRES, device=v.device)
    return (1.5 - (4 * v - centres).abs()).clamp(0, 1)


def to_image(rgb: torch.Tensor) -> Image:
    """(3, H, W) or (H, W, 3) in [0, 1] (clipped) -> an 8-bit RGB PIL image.

    Args:
        rgb: the colours, channels first or last.

    Returns:
        The image.

    Raises:
        UsageError: the tensor is not 3-D with 3 channels.
    """
    if rgb.dim() != 3 or 3 not in (rgb.shape[0], rgb.shape[-1]):
        raise UsageError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {tuple(rgb.shape)}")
    hwc = rgb if rgb.shape[-1] == 3 and rgb.shape[0] != 3 else rgb.permute(1, 2, 0)
    data = (hwc.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    image: Image = _pil().Image.fromarray(data.numpy(), "RGB")
    return image


def overlay(photo: Image | torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.5) -> Image:
    """The photo with `heatmap` ((H, W) in [0, 1]) in jet colours blended over it: (1 - alpha) photo + alpha colour.

    Args:
        photo: a PIL image, or an RGB tensor (3, H, W) in [0, 1].
        heatmap: (H, W) in [0, 1]; resized to the photo (bilinear).
        alpha: the map's weight, from 0 (the photo only) to 1 (the map only).

    Returns:
        A new RGB image the size of the photo.

    Raises:
        UsageError: `alpha` out of range, a heat map that is not 2-D, or a photo tensor that is not RGB.
    """
    if not 0 <= alpha <= 1:
        raise UsageError(f"alpha must be between 0 (photo only) and 1 (heat map only), got {alpha}")
    if heatmap.dim() != 2:
        raise UsageError(f"expected one heat map (H, W), got shape {tuple(heatmap.shape)}; pick one, e.g. maps[0]")
    rgb = _as_tensor(photo)
    height, width = rgb.shape[1:]
    heat = heatmap.detach().float().cpu()[None, None]
    if heat.shape[2:] != (height, width):
        heat = F.interpolate(heat, size=(height, width), mode="bilinear", align_corners=False)
    colour = jet(heat[0, 0]).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return to_image((1 - alpha) * rgb + alpha * colour)


def label(image: Image, text: str, *, corner: tuple[int, int] = (0, 0)) -> Image:
    """`image` with `text` written in white on a black box at `corner` (in place; returned for chaining).

    Args:
        image: a PIL image, drawn on in place.
        text: one line, in Pillow's default font.
        corner: (x, y) of the box's top-left corner, in pixels.

    Returns:
        `image`.
    """
    pil = _pil()
    draw = pil.ImageDraw.Draw(image)
    font = pil.ImageFont.load_default(size=FONT_SIZE)
    _, _, right, bottom = draw.textbbox((corner[0] + 2, corner[1] + 1), text, font=font)
    draw.rectangle((corner[0], corner[1], right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((corner[0] + 2, corner[1] + 1), text, fill=(255, 255, 255), font=font)
    return image


def tile_grid(tiles: Sequence[Image], captions: Sequence[str], columns: int | None = None, gap: int = 2) -> Image:
    """Equal-sized tiles in rows of `columns` (default: a near-square grid), each with its caption, on black.

    Args:
        tiles: PIL images of one size.
        captions: one caption per tile, written at its top-left corner.
        columns: tiles per row; default a near-square grid.
        gap: black pixels between tiles.

    Returns:
        One RGB image.

    Raises:
        UsageError: no tiles, or not one caption per tile.
    """
    if not tiles or len(tiles) != len(captions):
        raise UsageError(f"need one caption per tile and at least one tile, got {len(tiles)} and {len(captions)}")
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    width, height = tiles[0].size
    grid: Image = _pil().Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        corner = ((i % columns) * (width + gap), (i // columns) * (height + gap))
        grid.paste(tile, corner)
        label(grid, caption, corner=corner)
    return grid


def _as_tensor(photo: Image | torch.Tensor) -> torch.Tensor:
    """(3, H, W) float in [0, 1] on the CPU."""
    if isinstance(photo, torch.Tensor):
        if photo.dim() != 3 or photo.shape[0] != 3:
            raise UsageError(f"expected an RGB photo tensor (3, H, W) in [0, 1], got shape {tuple(photo.shape)}")
        return photo.detach().float().cpu().clamp(0, 1)
    return pil_to_tensor(photo.convert("RGB")).float() / 255
