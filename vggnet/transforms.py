"""Preprocessing presets: `ImageClassification` (evaluation) and `TrainClassification` (augmentation).

Pure torch; Pillow is needed only to accept PIL images. The evaluation preset reproduces
torchvision's `ImageClassification` including its rounding: the longer side is `int(size * long /
short)`, crop offsets are `int(round((side - crop) / 2))`, PIL images are resized by Pillow (as
torchvision does), tensors by `interpolate(antialias=True)`, uint8 results rounded before scaling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .weights import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ImageClassification", "TrainClassification", "load_image", "pil_to_tensor"]

ImageLike = Union["Image", torch.Tensor]


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install 'vggnet[image]'") from err
    return Image


def load_image(path: str | Any) -> Image:
    """Open an image file as RGB with Pillow (grayscale, palette and alpha images are converted)."""
    with _pil().open(path) as img:
        rgb: Image = img.convert("RGB")
    return rgb


def pil_to_tensor(img: Image) -> torch.Tensor:
    """A PIL image as a uint8 tensor (C, H, W), RGB for every mode but "L"."""
    import numpy as np

    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    array = np.array(img, dtype=np.uint8, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side at `size`, the longer truncated as torchvision does."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _resize_tensor(x: torch.Tensor, size: tuple[int, int], interpolation: str, antialias: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    dtype = x.dtype
    y = x if dtype.is_floating_point else x.to(torch.float32)
    align = False if interpolation in ("bilinear", "bicubic") else None
    aa = antialias and interpolation in ("bilinear", "bicubic")
    y = F.interpolate(y, size=size, mode=interpolation, align_corners=align, antialias=aa)
    if dtype.is_floating_point:
        return y
    if interpolation == "bicubic":
        y = y.clamp(0, 255)
    return torch.round(y).to(dtype)


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if crop > width or crop > height:  # zero padding, split as torchvision splits it
        pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
        x = F.pad(x, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = x.shape[-2:]
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return x[..., top : top + crop, left : left + crop]


class _Preset(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float], interpolation: str, antialias: bool) -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        self.mean = list(mean)
        self.std = list(std)
        self.interpolation = interpolation
        self.antialias = antialias

    def _as_batch(self, img: ImageLike) -> tuple[torch.Tensor, bool, bool]:
        """(N, C, H, W) tensor, whether the input was a single image, whether it came from PIL."""
        if not isinstance(img, torch.Tensor):
            return pil_to_tensor(img).unsqueeze(0), True, True
        if img.dim() not in (3, 4):
            raise ValueError(
                f"expected an image tensor (C, H, W) or a batch (N, C, H, W), got shape {tuple(img.shape)}"
            )
        return (img.unsqueeze(0), True, False) if img.dim() == 3 else (img, False, False)

    def _finish(self, x: torch.Tensor, single: bool) -> torch.Tensor:
        if x.shape[1] == 1 and len(self.mean) == 3:  # grayscale through an RGB preset: replicate
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"the preset normalizes {len(self.mean)} channels, the image has {x.shape[1]}")
        x = x.to(torch.float32) / 255 if x.dtype == torch.uint8 else x.to(torch.float32)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        x = (x - mean) / std
        return x[0] if single else x


class ImageClassification(_Preset):
    """Evaluation preset: shorter side to `resize_size`, center crop, scale to [0, 1], normalize.

    Accepts a PIL image, a uint8 or float tensor (C, H, W) or a batch (N, C, H, W) and returns float32
    of the same rank. Gray input is replicated to 3 channels when the preset has 3 means.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int = 256,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__(mean, std, interpolation, antialias)
        self.crop_size = crop_size
        self.resize_size = resize_size

    def forward(self, img: ImageLike) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            img = self._resize_pil(img)
            x, single = pil_to_tensor(img).unsqueeze(0), True
        else:
            x, single, _ = self._as_batch(img)
            size = resized_size(x.shape[-2], x.shape[-1], self.resize_size)
            x = _resize_tensor(x, size, self.interpolation, self.antialias)
        return self._finish(_center_crop(x, self.crop_size), single)

    def resized(self, crop_size: int) -> ImageClassification:
        """A copy of this preset cropping `crop_size` px after resizing the shorter side to crop_size*256/224."""
        return ImageClassification(
            crop_size=crop_size,
            resize_size=round(crop_size * 256 / 224),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            antialias=self.antialias,
        )

    def _resize_pil(self, img: Image) -> Image:
        pil = _pil()
        size = resized_size(img.height, img.width, self.resize_size)
        if (img.height, img.width) == size:
            return img
        resample = {"nearest": pil.NEAREST, "bilinear": pil.BILINEAR, "bicubic": pil.BICUBIC}[self.interpolation]
        resized: Image = img.resize((size[1], size[0]), resample)
        return resized

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, resize_size={self.resize_size}, mean={self.mean}, std={self.std}, "
            f"interpolation={self.interpolation!r}"
        )


class TrainClassification(_Preset):
    """Training preset: random resized crop (scale 0.08-1, ratio 3/4-4/3), horizontal flip, normalize.

    Random draws come from torch's generator, so `torch.manual_seed` makes them repeatable.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        hflip_prob: float = 0.5,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        antialias: bool = True,
    ) -> None:
        super().__init__(mean, std, interpolation, antialias)
        self.crop_size = crop_size
        self.hflip_prob = hflip_prob
        self.scale = scale
        self.ratio = ratio

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random crop; after 10 failed draws, the central crop at the clamped ratio."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def forward(self, img: ImageLike) -> torch.Tensor:
        x, single, _ = self._as_batch(img)
        top, left, h, w = self.crop_box(x.shape[-2], x.shape[-1])
        x = x[..., top : top + h, left : left + w]
        x = _resize_tensor(x, (self.crop_size, self.crop_size), self.interpolation, self.antialias)
        if torch.rand(1).item() < self.hflip_prob:
            x = x.flip(-1)
        return self._finish(x, single)

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}, mean={self.mean}, std={self.std}, hflip_prob={self.hflip_prob}"
