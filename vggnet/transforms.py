"""Preprocessing presets: `ImageClassification` (evaluation) and `TrainClassification` (augmentation).

Pure torch; Pillow is needed only to accept PIL images. The evaluation preset reproduces
torchvision's `ImageClassification` including its rounding: the longer side is `int(size * long /
short)`, crop offsets are `int(round((side - crop) / 2))`, PIL images are resized by Pillow (as
torchvision does), tensors by `interpolate(antialias=True)`, uint8 results rounded before scaling.

Pixel values: uint8 tensors and 8-bit images are divided by 255, uint16 tensors by 65535 (as
torchvision's `convert_image_dtype`), float tensors are taken as 0-1. 16-bit gray images (Pillow
modes "I;16*", and "I", which Pillow gives for some 16-bit PNG and TIFF files) are scaled to 8 bits
(v * 255 / 65535, rounded) instead of being clipped by Pillow's `convert`. Float images (mode "F")
and other integer tensor dtypes are refused: their scale is unknown.

A 1-channel (gray) preset turns colour input into luminance with Pillow's ITU-R 601-2 weights
(`convert("L")`, reproduced exactly for uint8 tensors), the conversion `ImageFolder(gray=True)`
applies in training, so a gray fine-tuned checkpoint classifies ordinary RGB images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_int
from .config import IMAGENET_MEAN, IMAGENET_STD, IN_CHANNELS, INTERPOLATIONS

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "CROP_PCT",
    "ImageClassification",
    "TrainClassification",
    "create_transform",
    "gray_image",
    "load_image",
    "pil_to_tensor",
]

# The share of the resized image the evaluation crop keeps: 224 / 256, ImageNet's convention (issue 17)
CROP_PCT = 0.875


def resize_for(crop_size: int, crop_pct: float = CROP_PCT) -> int:
    """The shorter side to resize to before a centre crop of `crop_size`: round(crop_size / crop_pct)."""
    return round(crop_size / crop_pct)


ImageLike = Union["Image", torch.Tensor]
SCALES = {torch.uint8: 255, torch.uint16: 65535}  # integer tensor dtypes read, and their white


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install 'vggnet[image]'") from err
    return Image


def load_image(path: str | Any) -> Image:
    """Open an image file as RGB with Pillow (gray, palette, alpha and 16-bit images are converted)."""
    with _pil().open(path) as img:
        rgb: Image = _eight_bit(img).convert("RGB")
    return rgb


def gray_image(img: Image) -> Image:
    """An image's luminance as an 8-bit "L" image: what gray presets and `ImageFolder(gray=True)` see."""
    img = _eight_bit(img)
    if img.mode == "L":
        return img
    if img.mode != "RGB":
        img = img.convert("RGB")  # via RGB, exactly as load_image(path).convert("L")
    gray: Image = img.convert("L")
    return gray


def pil_to_tensor(img: Image) -> torch.Tensor:
    """A PIL image as a uint8 tensor (C, H, W): (1, H, W) for "L" and 16-bit gray images, RGB otherwise."""
    import numpy as np

    img = _rgb_or_gray(img)
    array = np.array(img, dtype=np.uint8, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def _rgb_or_gray(img: Image) -> Image:
    """8-bit "RGB" or "L": 16-bit gray becomes "L", "RGB" and "L" stay, every other mode becomes "RGB"."""
    img = _eight_bit(img)
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def _eight_bit(img: Image) -> Image:
    """16-bit gray ("I;16*", "I") scaled to an 8-bit "L" image; other modes returned as they are.

    Pillow's own convert clips these modes at 255, so a mid-gray 16-bit PNG would come out white.
    """
    if img.mode == "F":
        raise ValueError(
            "a 32-bit float image (Pillow mode 'F') has no known value range; convert it to 8 bits first, "
            "e.g. Image.fromarray((np.asarray(img) * 255).round().clip(0, 255).astype('uint8')) for values in 0-1"
        )
    if img.mode != "I" and not img.mode.startswith("I;16"):
        return img
    import numpy as np

    values = np.asarray(img).astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(
            f"a 32-bit integer image (Pillow mode 'I') with values {low}..{high}: vggnet reads mode 'I' as "
            "16-bit (0-65535); scale it to 0-255 and save or pass it as an 8-bit image"
        )
    scaled = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
    out: Image = _pil().fromarray(scaled, "L")
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) with Pillow's RGB -> L weights (bit-exact for uint8, as Pillow rounds)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    if x.dtype.is_floating_point:
        return (r * 19595 + g * 38470 + b * 7471) / 65536
    r, g, b = r.to(torch.int64), g.to(torch.int64), b.to(torch.int64)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(x.dtype)


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
        y = y.clamp(0, torch.iinfo(dtype).max)
    return torch.round(y).to(dtype)


def _check_size(name: str, value: int) -> None:
    check_int(name, value, what="pixels")


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
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.mean = list(mean)
        self.std = list(std)
        self.interpolation = interpolation
        self.antialias = antialias

    def _pil_ready(self, img: Image) -> Image:
        """A PIL image in the mode the preset reads: "L" for a gray preset, else "RGB" or "L"."""
        if len(self.mean) == 1:
            return gray_image(img)
        return _rgb_or_gray(img)

    def _as_batch(self, img: ImageLike) -> tuple[torch.Tensor, bool]:
        """(N, C, H, W) tensor in a dtype the preset reads, and whether the input was a single image."""
        if not isinstance(img, torch.Tensor):
            return pil_to_tensor(self._pil_ready(img)).unsqueeze(0), True
        if img.dim() not in (3, 4):
            raise ValueError(
                f"expected an image tensor (C, H, W) or a batch (N, C, H, W), got shape {tuple(img.shape)}"
            )
        if not (img.dtype.is_floating_point or img.dtype in SCALES):
            raise ValueError(
                f"image tensors must be uint8 (0-255), uint16 (0-65535) or floating point (0-1), got {img.dtype}; "
                "convert with x.to(torch.uint8) if it holds 0-255 values, or x.float() / its maximum value"
            )
        x, single = (img.unsqueeze(0), True) if img.dim() == 3 else (img, False)
        if len(self.mean) == 1 and x.shape[1] == IN_CHANNELS:  # colour through a gray preset: luminance
            x = _luma(x)
        return x, single

    def _finish(self, x: torch.Tensor, single: bool) -> torch.Tensor:
        if x.shape[1] == 1 and len(self.mean) == 3:  # grayscale through an RGB preset: replicate
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != len(self.mean):
            n = len(self.mean)
            expected = {1: "1 channel (gray) or 3 (RGB)", 3: "3 channels (RGB) or 1 (gray)"}.get(n, f"{n} channels")
            raise ValueError(
                f"the preset reads {expected}, the image has {x.shape[1]}; pass a PIL image "
                "(any mode is converted) or drop the extra channels, e.g. x[:3] for RGBA"
            )
        scale = SCALES.get(x.dtype)
        x = x.to(torch.float32) / scale if scale is not None else x.to(torch.float32)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        x = (x - mean) / std
        return x[0] if single else x


class ImageClassification(_Preset):
    """Evaluation preset: shorter side to `resize_size`, center crop, scale to [0, 1], normalize.

    `resize_size` defaults to round(crop_size / 0.875) (`CROP_PCT` = 224/256): 256 for a 224 crop as in
    torchvision, 37 for 32 where torchvision keeps 256 and would discard most of a small image.

    Accepts a PIL image, a uint8, uint16 or float tensor (C, H, W) or a batch (N, C, H, W) and returns
    float32 of the same rank. Gray input is replicated to 3 channels when the preset has 3 means; colour
    input is turned into luminance when it has 1.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__(mean, std, interpolation, antialias)
        _check_size("crop_size", crop_size)
        if resize_size is None:  # follows the crop: 256 for 224 (torchvision's), 37 for 32, not 256 for any crop
            resize_size = resize_for(crop_size)
        _check_size("resize_size", resize_size)
        self.crop_size = crop_size
        self.resize_size = resize_size

    def forward(self, img: ImageLike) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):  # the mode first: resizing a palette image would be nearest
            x, single = pil_to_tensor(self._resize_pil(self._pil_ready(img))).unsqueeze(0), True
        else:
            x, single = self._as_batch(img)
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
        _check_size("crop_size", crop_size)
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
        x, single = self._as_batch(img)
        top, left, h, w = self.crop_box(x.shape[-2], x.shape[-1])
        x = x[..., top : top + h, left : left + w]
        x = _resize_tensor(x, (self.crop_size, self.crop_size), self.interpolation, self.antialias)
        if torch.rand(1).item() < self.hflip_prob:
            x = x.flip(-1)
        return self._finish(x, single)

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}, mean={self.mean}, std={self.std}, hflip_prob={self.hflip_prob}"


def create_transform(
    input_size: int | Sequence[int] = 224,
    *,
    train: bool = False,
    crop_pct: float = CROP_PCT,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
) -> ImageClassification | TrainClassification:
    """A preset for any input size, in timm's names: `input_size` N or (C, N, N), `crop_pct`, `train`.

    Evaluation: resize the shorter side to round(N / crop_pct), centre-crop N. Training: a random resized
    crop of N (area share `scale`) flipped with probability `hflip`. A 1-channel `input_size` with
    ImageNet's 3 means averages them, as gray fine-tuning does.
    """
    if isinstance(input_size, int):
        size, channels = input_size, len(mean)
    else:
        dims = tuple(input_size)
        if len(dims) != 3 or dims[1] != dims[2]:
            raise ValueError(f"input_size must be N or (C, N, N), got {input_size!r}")
        channels, size = dims[0], dims[1]
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], e.g. 0.875 (224/256), got {crop_pct!r}")
    if channels != len(mean):
        if channels == 1 and len(mean) == IN_CHANNELS and len(std) == IN_CHANNELS:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        else:
            raise ValueError(f"input_size has {channels} channels but mean has {len(mean)} values")
    if train:
        return TrainClassification(
            crop_size=size, mean=mean, std=std, interpolation=interpolation, hflip_prob=hflip, scale=scale
        )
    return ImageClassification(
        crop_size=size, resize_size=resize_for(size, crop_pct), mean=mean, std=std, interpolation=interpolation
    )
