"""One image file -> checked pixels: Pillow behind a pixel budget, and the conversions every reader shares.

`load_image` reads only regular files (a FIFO or a device named like an image is refused, not waited
on) and checks the size its header declares against the pixel budget (`max_image_pixels()`: Pillow's
own default, or $VGGNET_MAX_IMAGE_PIXELS) before any pixel is decoded. Whatever makes a file unusable
(not an image, cut short, over the budget) raises `BadImageError`, which names the file and the
problem, so a caller can skip that image and go on.

16-bit gray images (Pillow modes "I;16*", and "I", which Pillow gives for some 16-bit PNG and TIFF
files) are scaled to 8 bits (v * 255 / 65535, rounded) instead of being clipped by Pillow's
`convert`. Float images (mode "F") are refused: their scale is unknown. `gray_image` is the luminance
a gray preset and `ImageFolder(gray=True)` both see (Pillow's ITU-R 601-2 weights).
"""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
from typing import TYPE_CHECKING, Any

import torch

from vggnet import settings
from vggnet.checks import check_int
from vggnet.errors import BadImageError, MissingDependency, UsageError
from vggnet.settings import ENV_MAX_PIXELS

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "gray_image",
    "load_image",
    "max_image_pixels",
    "pil_to_tensor",
    "pillow",
    "rgb_or_gray",
]


def pillow() -> Any:
    """PIL.Image, imported on first use (importing vggnet does not import Pillow).

    Returns:
        The `PIL.Image` module.

    Raises:
        MissingDependency: (an ImportError) Pillow is not installed; the message says how to install it.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise MissingDependency("reading image files needs Pillow: pip install 'vggnet[image]'") from err
    return Image


# The pixel budget: no image is decoded, nor resized, to more pixels than this. Pillow's own default
# (MAX_IMAGE_PIXELS, about 89.5 MP: 256 MiB of RGB), checked from the header before anything is decoded.
DEFAULT_MAX_PIXELS = 89_478_485


def max_image_pixels() -> int:
    """The pixel budget: $VGGNET_MAX_IMAGE_PIXELS if set, else DEFAULT_MAX_PIXELS (Pillow's default).

    Returns:
        The most pixels an image may have, before and after resizing.
    """
    return settings.max_image_pixels(DEFAULT_MAX_PIXELS)


def _over_budget(pixels: int, budget: int, what: str) -> str:
    return (
        f"{what} {pixels:,} pixels, over the budget of {budget:,} (set {ENV_MAX_PIXELS} to change it); "
        "nothing was decoded"
    )


# what Pillow raises for a malformed file, besides OSError ("image file is truncated", "cannot identify")
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, ZeroDivisionError, struct.error, MemoryError)


def load_image(path: str | os.PathLike[str] | Any, *, max_pixels: int | None = None) -> Image:
    """Open an image file as RGB with Pillow (gray, palette, alpha and 16-bit images are converted).

    The header's size is checked against the pixel budget before any pixel is decoded.

    Args:
        path: the file (only a regular file is read: a FIFO or a device named like an image is refused,
            not waited on), or an open binary file object.
        max_pixels: the budget in pixels (width x height); default `max_image_pixels()`.

    Returns:
        The image, 8-bit RGB (16-bit gray scaled to 8 bits, not clipped).

    Raises:
        BadImageError: not an image Pillow can identify, cut short, over the budget, a FIFO or a device, a
            float or 32-bit image; the message names the file and the problem.
        OSError: the file is missing or unreadable (as `open` raises it).
    """
    pil = pillow()
    budget = max_image_pixels() if max_pixels is None else max_pixels
    check_int("max_pixels", budget)
    source = _open_regular(path) if isinstance(path, (str, os.PathLike)) else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)  # the budget below decides
            with pil.open(source) as img:
                width, height = img.size  # read from the header: nothing decoded yet
                if width < 1 or height < 1:
                    raise BadImageError(path, f"its header declares {width}x{height} pixels")
                if width * height > budget:
                    raise BadImageError(
                        path, _over_budget(width * height, budget, f"its header declares {width}x{height} =")
                    )
                rgb: Image = _eight_bit(img).convert("RGB")
    except BadImageError:
        raise
    except pil.DecompressionBombError as err:  # over twice Pillow's own MAX_IMAGE_PIXELS: refused inside open
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(found.group(1)) if found else budget + 1
        if pixels > budget:
            raise BadImageError(path, _over_budget(pixels, budget, "its header declares")) from None
        raise BadImageError(
            path,
            f"its header declares {pixels:,} pixels, over Pillow's own limit (twice PIL.Image.MAX_IMAGE_PIXELS, "
            f"{pil.MAX_IMAGE_PIXELS:,}): raise that too, or lower {ENV_MAX_PIXELS}",
        ) from None
    except pil.UnidentifiedImageError:
        raise BadImageError(path, "not an image Pillow can identify (a text or HTML file named like one?)") from None
    except _DECODE_ERRORS as err:  # a cut-short file, a broken header
        problem = str(err) or type(err).__name__
        raise BadImageError(path, f"not a readable image ({problem})") from None
    finally:
        if source is not path:
            source.close()
    return rgb


def _open_regular(path: str | os.PathLike[str]) -> Any:
    """`path` opened for reading, if it is a regular file: a FIFO would block the read, /dev/zero never end it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise BadImageError(path, f"is {kind}, not an image file; nothing was read")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def gray_image(img: Image) -> Image:
    """An image's luminance as an 8-bit "L" image: what gray presets and `ImageFolder(gray=True)` see.

    Args:
        img: a PIL image of any mode but "F" (16-bit gray is scaled, not clipped).

    Returns:
        The "L" image: Pillow's ITU-R 601-2 luma of its RGB form.
    """
    img = _eight_bit(img)
    if img.mode == "L":
        return img
    if img.mode != "RGB":
        img = img.convert("RGB")  # via RGB, exactly as load_image(path).convert("L")
    gray: Image = img.convert("L")
    return gray


def pil_to_tensor(img: Image) -> torch.Tensor:
    """A PIL image as a uint8 tensor (C, H, W): (1, H, W) for "L" and 16-bit gray images, RGB otherwise.

    Args:
        img: a PIL image (modes other than RGB and gray are converted to RGB).

    Returns:
        A contiguous uint8 tensor, a copy of the pixels.
    """
    import numpy as np

    img = rgb_or_gray(img)
    array = np.array(img, dtype=np.uint8, copy=True)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def rgb_or_gray(img: Image) -> Image:
    """8-bit "RGB" or "L": 16-bit gray becomes "L", "RGB" and "L" stay, every other mode becomes "RGB".

    Args:
        img: a PIL image.

    Returns:
        The image in mode "RGB" or "L" (itself when it already is).
    """
    img = _eight_bit(img)
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def _eight_bit(img: Image) -> Image:
    """16-bit gray ("I;16*", "I") scaled to an 8-bit "L" image; other modes returned as they are.

    Pillow's own convert clips these modes at 255, so a mid-gray 16-bit PNG would come out white.
    """
    if img.mode == "F":
        raise UsageError(
            "a 32-bit float image (Pillow mode 'F') has no known value range; convert it to 8 bits first, "
            "e.g. Image.fromarray((np.asarray(img) * 255).round().clip(0, 255).astype('uint8')) for values in 0-1"
        )
    if img.mode != "I" and not img.mode.startswith("I;16"):
        return img
    import numpy as np

    values = np.asarray(img).astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise UsageError(
            f"a 32-bit integer image (Pillow mode 'I') with values {low}..{high}: vggnet reads mode 'I' as "
            "16-bit (0-65535); scale it to 0-255 and save or pass it as an 8-bit image"
        )
    scaled = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
    out: Image = pillow().fromarray(scaled, "L")
    return out
