"""Preprocessing presets: `ImageClassification` (evaluation) and `TrainClassification` (augmentation).

Pure torch; Pillow is needed only to accept PIL images (decoded and checked by `decode.py`). The
evaluation preset reproduces torchvision's `ImageClassification` including its rounding: the longer
side is `int(size * long / short)`, crop offsets are `int(round((side - crop) / 2))`, PIL images are
resized by Pillow (as torchvision does), tensors by `interpolate(antialias=True)`, uint8 results
rounded before scaling. A resize that would exceed the pixel budget (`decode.max_image_pixels()`) is
refused before anything is allocated.

Pixel values: uint8 tensors and 8-bit images are divided by 255, uint16 tensors by 65535 (as
torchvision's `convert_image_dtype`), float tensors are taken as 0-1; other integer tensor dtypes are
refused: their scale is unknown. PIL images go through `decode.rgb_or_gray` first (16-bit gray scaled
to 8 bits, float images refused).

A 1-channel (gray) preset turns colour input into luminance with Pillow's ITU-R 601-2 weights
(`convert("L")`, reproduced exactly for uint8 tensors), the conversion `ImageFolder(gray=True)`
applies in training, so a gray fine-tuned checkpoint classifies ordinary RGB images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch._jit_internal import is_scripting  # torch.jit.is_scripting, which torch.jit leaves out of __all__

from vggnet.checks import check_choice, check_float, check_int
from vggnet.data.constants import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    KERAS_MEAN,
    KERAS_STD,
    MAX_RESIZE,
    MAX_SIZE,
    RGB,
)
from vggnet.data.decode import (
    gray_image,
    max_image_pixels,
    pil_to_tensor,
    pillow,
    rgb_or_gray,
)
from vggnet.errors import BadImageError, UsageError
from vggnet.settings import ENV_MAX_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "CROP_PCT",
    "ImageClassification",
    "TrainClassification",
    "create_transform",
    "keras_transforms",
]
# BadImageError, load_image and pil_to_tensor live in decode.py; they stay importable from here, where
# the README and earlier code name them.

# The share of the resized image the evaluation crop keeps: 224 / 256, ImageNet's convention (issue 17)
CROP_PCT = 0.875


def resize_for(crop_size: int, crop_pct: float = CROP_PCT) -> int:
    """The shorter side to resize to before a centre crop of `crop_size`: round(crop_size / crop_pct)."""
    return round(crop_size / crop_pct)


ImageLike = Union["Image", torch.Tensor]
SCALES = {torch.uint8: 255, torch.uint16: 65535}  # integer tensor dtypes read, and their white


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) with Pillow's RGB -> L weights (bit-exact for uint8, as Pillow rounds)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    if x.is_floating_point():
        return (r * 19595 + g * 38470 + b * 7471) / 65536
    r, g, b = r.to(torch.int64), g.to(torch.int64), b.to(torch.int64)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(x.dtype)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side at `size`, the longer truncated as torchvision does.

    BadImageError when the result would exceed the pixel budget (`max_image_pixels()`): a 1x60000
    image resized to a 256 px shorter side would be 256x15,360,000 pixels, 11 GiB of RGB.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / max(short, 1))
    if not is_scripting():  # TorchScript leaves this block out unseen (its messages use format specs)
        _check_resize(height, width, size, new_long)
    return (new_long, size) if width <= height else (size, new_long)


def _check_resize(height: int, width: int, size: int, new_long: int) -> None:
    """BadImageError for an empty image, or one whose resize would exceed the pixel budget."""
    short, long = (width, height) if width <= height else (height, width)
    if short < 1:
        raise BadImageError(None, f"an image of {height}x{width} pixels has nothing to resize")
    budget = max_image_pixels()
    if new_long * size > budget:
        raise BadImageError(
            None,
            f"an image of {height}x{width} (aspect ratio {long / short:,.0f}:1) resized to a shorter side of {size} "
            f"would be {new_long:,}x{size} = {new_long * size:,} pixels, over the budget of {budget:,} "
            f"(set {ENV_MAX_PIXELS} to change it); crop it closer to square first",
        )


def _white(dtype: torch.dtype) -> float:
    """The value of white: 255 for uint8, 65535 for uint16 (SCALES, spelled out for TorchScript), else 1."""
    if dtype == torch.uint8:
        return 255.0
    if dtype == torch.uint16:
        return 65535.0
    return 1.0


def _resize_tensor(x: torch.Tensor, size: tuple[int, int], interpolation: str, antialias: bool) -> torch.Tensor:
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:
        return x
    floating = x.is_floating_point()
    y = x if floating else x.to(torch.float32)
    smooth = interpolation == "bilinear" or interpolation == "bicubic"
    align: bool | None = False if smooth else None
    y = F.interpolate(
        y, size=[size[0], size[1]], mode=interpolation, align_corners=align, antialias=antialias and smooth
    )
    if floating:
        return y
    if interpolation == "bicubic":
        y = y.clamp(0, _white(x.dtype))
    return torch.round(y).to(x.dtype)


def _check_size(name: str, value: int, most: int) -> None:
    check_int(name, value, what="pixels")
    if value > most:
        raise UsageError(
            f"{name} must be at most {most} pixels (vgg16 keeps 1.2 GiB of activations per image at a "
            f"{MAX_SIZE} px crop, 21x what 224 needs), got {value}"
        )


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    height, width = x.shape[-2], x.shape[-1]
    if crop > width or crop > height:  # zero padding, split as torchvision splits it
        pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
        x = F.pad(x, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = x.shape[-2], x.shape[-1]
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return x[..., top : top + crop, left : left + crop]


class _Preset(nn.Module):
    """The shared parts of the presets. `forward` is annotated for tensors, as torchvision's presets, so
    `torch.jit.script` compiles the tensor path; in eager mode a PIL image works too.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], interpolation: str, antialias: bool) -> None:
        super().__init__()
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        if len(mean) != len(std) or not mean:
            raise UsageError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.mean = list(mean)
        self.std = list(std)
        self.interpolation = interpolation
        self.antialias = antialias

    def _pil_ready(self, img: Image) -> Image:
        """A PIL image in the mode the preset reads: "L" for a gray preset, else "RGB" or "L"."""
        if len(self.mean) == 1:
            return gray_image(img)
        return rgb_or_gray(img)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if not is_scripting():  # TorchScript leaves this block out unseen: no PIL, no checks with messages
            return self._eager(img)
        return self._run(img)

    def _eager(self, img: ImageLike) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            self._check_tensor(img)
            return self._run(img)
        return self._run_pil(img)

    def _run(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run_pil(self, img: Image) -> torch.Tensor:
        raise NotImplementedError

    def _check_tensor(self, img: torch.Tensor) -> None:
        """ValueError unless `img` is a (C, H, W) or (N, C, H, W) tensor of a dtype the preset reads."""
        if img.dim() not in (3, 4):
            raise UsageError(
                f"expected an image tensor (C, H, W) or a batch (N, C, H, W), got shape {tuple(img.shape)}"
            )
        if not (img.dtype.is_floating_point or img.dtype in SCALES):
            raise UsageError(
                f"image tensors must be uint8 (0-255), uint16 (0-65535) or floating point (0-1), got {img.dtype}; "
                "convert with x.to(torch.uint8) if it holds 0-255 values, or x.float() / its maximum value"
            )

    def _as_batch(self, img: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(N, C, H, W) tensor (colour made luminance for a gray preset), and whether `img` was a single image."""
        single = img.dim() == 3
        x = img.unsqueeze(0) if single else img
        if len(self.mean) == 1 and x.shape[1] == 3:  # colour through a gray preset: luminance (TorchScript: no globals)
            x = _luma(x)
        return x, single

    def _finish(self, x: torch.Tensor, single: bool) -> torch.Tensor:
        if x.shape[1] == 1 and len(self.mean) == 3:  # grayscale through an RGB preset: replicate
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != len(self.mean):
            n = len(self.mean)
            expected = f"{n} channels"
            if n == 1:
                expected = "1 channel (gray) or 3 (RGB)"
            elif n == 3:
                expected = "3 channels (RGB) or 1 (gray)"
            raise UsageError(
                f"the preset reads {expected}, the image has {x.shape[1]}; pass a PIL image "
                "(any mode is converted) or drop the extra channels, e.g. x[:3] for RGBA"
            )
        floating = x.is_floating_point()
        x = x.to(torch.float32) if floating else x.to(torch.float32) / _white(x.dtype)
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

    Args:
        crop_size: the side of the square center crop, in pixels (at most 1024).
        resize_size: the shorter side after resizing (at most 1170); default round(crop_size / 0.875).
        mean: one value per channel, on the 0-1 scale (3 values: RGB; 1 value: a gray model).
        std: one value per channel, on the 0-1 scale.
        interpolation: "bilinear" (torchvision's), "bicubic" or "nearest".
        antialias: antialias the resize of tensors, as PIL does (torchvision's default).

    Raises:
        UsageError: a size out of range, or mean and std of different lengths.
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
        _check_size("crop_size", crop_size, MAX_SIZE)
        if resize_size is None:  # follows the crop: 256 for 224 (torchvision's), 37 for 32, not 256 for any crop
            resize_size = resize_for(crop_size)
        _check_size("resize_size", resize_size, MAX_RESIZE)
        self.crop_size = crop_size
        self.resize_size = resize_size

    def _run(self, img: torch.Tensor) -> torch.Tensor:
        x, single = self._as_batch(img)
        size = resized_size(x.shape[-2], x.shape[-1], self.resize_size)
        x = _resize_tensor(x, size, self.interpolation, self.antialias)
        return self._finish(_center_crop(x, self.crop_size), single)

    def _run_pil(self, img: Image) -> torch.Tensor:
        x = pil_to_tensor(self._resize_pil(self._pil_ready(img)))  # the mode first: a palette image resized is nearest
        return self._finish(_center_crop(x.unsqueeze(0), self.crop_size), True)

    def resized(self, crop_size: int) -> ImageClassification:
        """A copy of this preset cropping `crop_size` px after resizing the shorter side to crop_size*256/224.

        Args:
            crop_size: the new crop side in pixels.

        Returns:
            A new preset with the same mean, std and interpolation.
        """
        return ImageClassification(
            crop_size=crop_size,
            resize_size=round(crop_size * 256 / 224),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            antialias=self.antialias,
        )

    def _resize_pil(self, img: Image) -> Image:
        pil = pillow()
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

    Args:
        crop_size: the side of the square output, in pixels.
        mean: one value per channel, on the 0-1 scale.
        std: one value per channel, on the 0-1 scale.
        interpolation: "bilinear", "bicubic" or "nearest".
        hflip_prob: the probability of a horizontal flip (0 for digits or text).
        scale: the range of the crop's share of the image's area.
        ratio: the range of the crop's aspect ratio (width / height).
        antialias: antialias the resize of tensors.
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
        _check_size("crop_size", crop_size, MAX_SIZE)
        self.crop_size = crop_size
        self.hflip_prob = hflip_prob
        self.scale = scale
        self.ratio = ratio

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random crop; after 10 failed draws, the central crop at the clamped ratio.

        Args:
            height: the image's height in pixels.
            width: the image's width in pixels.

        Returns:
            The crop's top row, left column, height and width.
        """
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(self.scale[0], self.scale[1]).item())
            aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item()))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=[1]).item())
                left = int(torch.randint(0, width - w + 1, size=[1]).item())
                return top, left, h, w
        in_ratio = width / height
        low, high = min(self.ratio[0], self.ratio[1]), max(self.ratio[0], self.ratio[1])
        if in_ratio < low:
            w, h = width, int(round(width / low))
        elif in_ratio > high:
            h, w = height, int(round(height * high))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _run(self, img: torch.Tensor) -> torch.Tensor:
        x, single = self._as_batch(img)
        return self._augment(x, single)

    def _run_pil(self, img: Image) -> torch.Tensor:
        return self._augment(pil_to_tensor(self._pil_ready(img)).unsqueeze(0), True)

    def _augment(self, x: torch.Tensor, single: bool) -> torch.Tensor:
        top, left, h, w = self.crop_box(x.shape[-2], x.shape[-1])
        x = x[..., top : top + h, left : left + w]
        x = _resize_tensor(x, (self.crop_size, self.crop_size), self.interpolation, self.antialias)
        if float(torch.rand(1).item()) < self.hflip_prob:
            x = x.flip(-1)
        return self._finish(x, single)

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}, mean={self.mean}, std={self.std}, hflip_prob={self.hflip_prob}"


def keras_transforms(crop_size: int = 224, resize_size: int = 256) -> ImageClassification:
    """The preset of Keras-converted weights (`formats.from_keras`): Keras' `preprocess_input` ("caffe" mode).

    Keras subtracts the BGR means (103.939, 116.779, 123.68) from 0-255 BGR pixels; the conversion moved
    the BGR order into conv1_1, so this preset subtracts the same means in RGB order on the 0-255 scale.

    Args:
        crop_size: the center crop's side in pixels.
        resize_size: the shorter side after resizing.

    Returns:
        The preset.
    """
    return ImageClassification(crop_size=crop_size, resize_size=resize_size, mean=KERAS_MEAN, std=KERAS_STD)


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

    Args:
        input_size: the crop side N, or (channels, N, N).
        train: the training preset instead of the evaluation one.
        crop_pct: the share of the resized image the evaluation crop keeps, in (0, 1].
        mean: one value per channel, on the 0-1 scale.
        std: one value per channel, on the 0-1 scale.
        interpolation: "bilinear", "bicubic" or "nearest".
        hflip: the training preset's flip probability.
        scale: the training preset's range of crop area shares.

    Returns:
        An `ImageClassification`, or a `TrainClassification` with `train=True`.

    Raises:
        UsageError: `input_size` is not N or (C, N, N), `crop_pct` is out of range, or the channels and the
            means disagree.
    """
    if isinstance(input_size, int):
        size, channels = input_size, len(mean)
    else:
        dims = tuple(input_size)
        if len(dims) != 3 or dims[1] != dims[2]:
            raise UsageError(f"input_size must be N or (C, N, N), got {input_size!r}")
        channels, size = dims[0], dims[1]
    check_float("crop_pct", crop_pct, above=0.0, most=1.0, expected="in (0, 1], e.g. 0.875 (224/256)")
    if channels != len(mean):
        if channels == 1 and len(mean) == RGB and len(std) == RGB:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        else:
            raise UsageError(f"input_size has {channels} channels but mean has {len(mean)} values")
    if train:
        return TrainClassification(
            crop_size=size, mean=mean, std=std, interpolation=interpolation, hflip_prob=hflip, scale=scale
        )
    return ImageClassification(
        crop_size=size, resize_size=resize_for(size, crop_pct), mean=mean, std=std, interpolation=interpolation
    )
