"""The options the commands share: exit statuses, argument types, the option blocks, and what they resolve to.

An argument type raises `argparse.ArgumentTypeError` saying what it expected, so a bad value exits 2 before
anything runs; `UsageError` does the same for a bad combination found later. `--weights`/`--arch`/`--sha256` resolve to
a model by `checkpoint.load`'s rules, `--device` to a device (this process's GPU under torchrun).

Nothing here imports torch at import time: the argument types answer a bad value at once, and what needs
torch (a device, a model) imports it when it runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vggnet.data.constants import MAX_RESIZE, MAX_SIZE
from vggnet.errors import ArchMismatch, UsageError
from vggnet.models.config import MIN_SIZE, SOURCE_RULES, check_arch
from vggnet.settings import torchrun

if TYPE_CHECKING:
    from vggnet.data.transforms import ImageClassification
    from vggnet.models.checkpoint import Loaded


# Every subcommand takes --debug and --quiet too (`vggnet summary vgg16 --quiet`); SUPPRESS keeps a
# subcommand's default from overwriting the value given before the subcommand (`vggnet -q summary`).
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
_COMMON.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

# --weights of every command that loads a model: the one set of rules checkpoint.load follows
WEIGHTS_HELP = f"{SOURCE_RULES} (default DEFAULT)"


# --- argument types --------------------------------------------------------------------------------


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for "224" or "224x320" (height x width)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels, got {text!r}") from None
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2:
        raise argparse.ArgumentTypeError(
            f"expected N or HxW in pixels (e.g. 224 or 224x320), got {text!r}: {len(sides)} parts"
        )
    if min(sides) < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: VGG needs at least {MIN_SIZE} px per side (five 2x2 max-pools); give N or HxW, N >= {MIN_SIZE}"
        )
    return sides[0], sides[1]


def side_arg(text: str) -> int:
    """argparse type for one side in pixels: VGG's five 2x2 max-pools need at least MIN_SIZE; at most MAX_SIZE."""
    value = positive(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"VGG needs at least {MIN_SIZE} px (five 2x2 max-pools), got {text!r}")
    _most(text, value)
    return value


def bounded_size_arg(text: str) -> tuple[int, int]:
    """`size_arg` for sizes that are run, not just computed on the meta device: each side at most MAX_SIZE."""
    sides = size_arg(text)
    _most(text, max(sides))
    return sides


def _most(text: str, side: int) -> None:
    if side > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SIZE} px per side (vgg16 keeps 1.2 GiB of activations per image at {MAX_SIZE}), got {text!r}"
        )


def resize_arg(text: str) -> int:
    """argparse type for the side an image is resized to: from MIN_SIZE to MAX_RESIZE pixels."""
    value = positive(text)
    if not MIN_SIZE <= value <= MAX_RESIZE:
        raise argparse.ArgumentTypeError(f"expected {MIN_SIZE} to {MAX_RESIZE} px (five 2x2 max-pools), got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type for a finite number ("0.485", "-1", "1e-3")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def device_arg(text: str) -> str:
    """argparse type for a torch device that exists here (not "meta"), listing the valid ones when not."""
    from vggnet.checks import available_devices, check_device

    try:
        device = check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if device is not None and device.type == "meta":
        valid = ", ".join(available_devices())
        raise argparse.ArgumentTypeError(f"the meta device holds no values to run a model with; valid: {valid}")
    return text


def positive(text: str) -> int:
    """argparse type for a positive integer."""
    return _integer(text, 1, "a positive integer")


def count(text: str) -> int:
    """argparse type for a count that may be 0."""
    return _integer(text, 0, "0 or a positive integer")


def workers_arg(text: str) -> int:
    """argparse type for a number of data-loading processes: 0 up to a few per CPU core (`checks.max_workers`)."""
    from vggnet.checks import check_workers

    value = count(text)
    try:
        check_workers("--workers", value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--workers must be ")) from None
    return value


def _integer(text: str, least: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def model_arg(text: str) -> str:
    """argparse type for a builder name, case-insensitive, listing the valid ones when unknown."""
    try:
        return check_arch(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --- option blocks ---------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: the --debug and --quiet every command takes."""
    return _COMMON


def add_weights(p: argparse.ArgumentParser, *, arch: bool = True) -> None:
    """--arch (unless the command takes the model as an argument), --weights and --sha256: the model to load."""
    if arch:
        p.add_argument(
            "--arch", type=model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)"
        )
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")


def add_device(p: argparse.ArgumentParser) -> None:
    """--device, checked against the devices this machine has."""
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")


PRESET_HELP = (
    "The preprocessing is the weights' own preset (a vggnet checkpoint's, a record's; ImageNet's for a plain "
    "state dict): --resize N sets the shorter side the image is resized to, --crop N the side of the center "
    "crop taken from it; one without the other keeps the preset's crop/resize ratio (ImageNet's 224/256: "
    "--crop 32 resizes to 37, --resize 64 crops 56), both together are taken as given (--resize 32 --crop 32: "
    "resize to 32, no crop). --mean and --std replace the normalization, one value per input channel "
    "(0-1 pixel scale)."
)


def add_preset(p: argparse.ArgumentParser) -> None:
    """--resize, --crop, --mean, --std: the preset a checkpoint that records none (a plain state dict) needs."""
    group = p.add_argument_group("preprocessing", PRESET_HELP)
    group.add_argument("--resize", type=resize_arg, metavar="N", help="resize the shorter side to N px")
    group.add_argument("--crop", type=side_arg, metavar="N", help="then center-crop N x N px")
    group.add_argument("--mean", type=finite_float, nargs="+", metavar="M", help="per channel, e.g. 0.485 0.456 0.406")
    group.add_argument("--std", type=positive_float, nargs="+", metavar="S", help="per channel, e.g. 0.229 0.224 0.225")


def preset_given(args: argparse.Namespace) -> bool:
    """Whether any of --resize, --crop, --mean, --std was given."""
    return any(getattr(args, name) is not None for name in ("resize", "crop", "mean", "std"))


def check_preset(args: argparse.Namespace, *, image_size: bool = True) -> None:
    """UsageError for a combination of the preset options that can be refused before anything is loaded.

    `image_size`: the command's --image-size is a crop (predict, evaluate, embed), which --crop replaces.
    """
    if image_size and getattr(args, "image_size", None) is not None and (args.resize or args.crop):
        raise UsageError(
            "--image-size N is --crop N with ImageNet's ratio (resize to N*256/224); give either it or --resize/--crop"
        )
    if args.resize is not None and args.crop is not None and args.crop > args.resize:
        raise UsageError(
            f"--crop {args.crop} is larger than --resize {args.resize}: the crop would be padded with black; "
            f"give --crop at most {args.resize}"
        )


# --- what they resolve to --------------------------------------------------------------------------


def world() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    return torchrun().world


def rank() -> int:
    """This process's rank under torchrun (0 outside torchrun)."""
    return torchrun().rank


def run_device(args: argparse.Namespace) -> str:
    """--device, else cuda (this process's GPU under torchrun) when available, else cpu."""
    import torch

    if args.device is not None:
        return str(args.device)
    if not torch.cuda.is_available():
        return "cpu"
    launch = torchrun()
    return f"cuda:{launch.local_rank}" if launch.world > 1 else "cuda"


@contextmanager
def closing_process_group() -> Iterator[None]:
    """Around a library call that may start a process group under torchrun: it is ended however the call ends."""
    import torch.distributed as dist

    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def load_model(args: argparse.Namespace, device: str, *, classifier: bool) -> Loaded:
    """The model, preset and labels --weights names (checkpoint.load's rules); --arch defaults to the source's own.

    `classifier`: fc8 must be usable (a features-only record is refused).
    """
    from vggnet.models.checkpoint import load

    try:  # lpips takes no --sha256
        return load(args.weights, arch=args.arch, device=device, progress=not args.quiet,
                    sha256=getattr(args, "sha256", None), classifier=classifier)  # fmt: skip
    except ArchMismatch as err:
        raise UsageError(err.explain("--arch ")) from err


def run_preset(args: argparse.Namespace, loaded: Loaded, image_size: int | None = None) -> ImageClassification:
    """The preset to run with: the weights' own, at --image-size `image_size`, with --resize/--crop/--mean/--std.

    See `PRESET_HELP`; --mean and --std take one value per input channel of the model.
    """
    from vggnet.data.transforms import ImageClassification

    preset = loaded.preset if image_size is None else loaded.preset.resized(image_size)
    if not preset_given(args):
        return preset
    resize, crop = args.resize, args.crop
    ratio = preset.crop_size / preset.resize_size  # what one of them given alone keeps
    if resize is None:
        resize = preset.resize_size if crop is None else round(crop / ratio)
    if crop is None:
        crop = preset.crop_size if args.resize is None else round(resize * ratio)
    if crop < MIN_SIZE:
        raise UsageError(
            f"--resize {resize} with the preset's ratio {preset.crop_size}/{preset.resize_size} crops {crop} px, under "
            f"VGG's {MIN_SIZE}; give --crop too (--resize {resize} --crop {resize}: no crop)"
        )
    channels = loaded.model.in_channels
    for name in ("mean", "std"):
        given = getattr(args, name)
        if given is not None and len(given) != channels:
            raise UsageError(
                f"--{name} takes {channels} value(s), one per input channel of the model; got {len(given)}"
            )
    return ImageClassification(
        crop_size=crop, resize_size=resize, mean=args.mean or preset.mean, std=args.std or preset.std,
        interpolation=preset.interpolation, antialias=preset.antialias,
    )  # fmt: skip
