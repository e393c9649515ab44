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
    """Parse an image size for argparse: "224" (square) or "224x320" (height x width).

    Args:
        text: the option's value; "x" or "*" separates height and width, case-insensitive.

    Returns:
        (height, width) in pixels, each at least `MIN_SIZE`.

    Raises:
        ArgumentTypeError: the text is not N or HxW, or a side is under `MIN_SIZE` (VGG's five 2x2 max-pools);
            argparse exits 2 with the message.
    """
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
    """Parse one side in pixels for argparse, from `MIN_SIZE` (VGG's five 2x2 max-pools) to `MAX_SIZE`.

    Args:
        text: the option's value, a positive integer.

    Returns:
        The side in pixels.

    Raises:
        ArgumentTypeError: the side is under `MIN_SIZE` (or not a positive integer, or over `MAX_SIZE`).
    """
    value = positive(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"VGG needs at least {MIN_SIZE} px (five 2x2 max-pools), got {text!r}")
    _most(text, value)
    return value


def bounded_size_arg(text: str) -> tuple[int, int]:
    """Parse an image size that is run, not only computed on the meta device: at most `MAX_SIZE` per side.

    Args:
        text: "N" or "HxW" in pixels.

    Returns:
        (height, width) in pixels.
    """
    sides = size_arg(text)
    _most(text, max(sides))
    return sides


def _most(text: str, side: int) -> None:
    if side > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SIZE} px per side (vgg16 keeps 1.2 GiB of activations per image at {MAX_SIZE}), got {text!r}"
        )


def resize_arg(text: str) -> int:
    """Parse the side an image's shorter side is resized to, for argparse: from `MIN_SIZE` to `MAX_RESIZE` pixels.

    Args:
        text: the option's value, a positive integer.

    Returns:
        The side in pixels.

    Raises:
        ArgumentTypeError: the value is outside `MIN_SIZE`..`MAX_RESIZE` (or not a positive integer).
    """
    value = positive(text)
    if not MIN_SIZE <= value <= MAX_RESIZE:
        raise argparse.ArgumentTypeError(f"expected {MIN_SIZE} to {MAX_RESIZE} px (five 2x2 max-pools), got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Parse a finite number for argparse ("0.485", "-1", "1e-3").

    Args:
        text: the option's value.

    Returns:
        The number.

    Raises:
        ArgumentTypeError: the text is not a number, or is nan or infinite.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite number above 0 for argparse (a --std value).

    Args:
        text: the option's value.

    Returns:
        The number.

    Raises:
        ArgumentTypeError: the number is 0 or below (or not finite).
    """
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def device_arg(text: str) -> str:
    """Parse a torch device that exists on this machine, for argparse; the error lists the valid ones.

    Args:
        text: "cpu", "cuda", "cuda:1", "mps", ...

    Returns:
        The text as given, once checked (torch is imported only here, when the option is given).

    Raises:
        ArgumentTypeError: the device is unknown or absent here, or is "meta" (which holds no values to run with).
    """
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
    """Parse a positive integer for argparse (a batch size, a number of epochs).

    Args:
        text: the option's value.

    Returns:
        The integer, at least 1.
    """
    return _integer(text, 1, "a positive integer")


def count(text: str) -> int:
    """Parse a count that may be 0 for argparse.

    Args:
        text: the option's value.

    Returns:
        The integer, at least 0.
    """
    return _integer(text, 0, "0 or a positive integer")


def workers_arg(text: str) -> int:
    """Parse a number of data-loading processes for argparse: 0 (load in this process) up to `checks.max_workers`.

    Args:
        text: the option's value.

    Returns:
        The number of worker processes.

    Raises:
        ArgumentTypeError: the number is above what this machine's cores allow (or not a count).
    """
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
    """Parse a builder name for argparse, case-insensitive ("VGG16_bn" is vgg16_bn).

    Args:
        text: the option's value.

    Returns:
        The builder name in lower case, one of `vggnet.models.config.ARCHS`.

    Raises:
        ArgumentTypeError: the name is unknown; the message lists the valid names.
    """
    try:
        return check_arch(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --- option blocks ---------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """Return the parent parser of every command, which adds the --debug and --quiet every command takes.

    Returns:
        The shared parent parser (add_help off; its defaults never overwrite the values given before the command).
    """
    return _COMMON


def add_weights(p: argparse.ArgumentParser, *, arch: bool = True) -> None:
    """Declare the model to load: --arch (unless the command takes the model as an argument), --weights and --sha256.

    Args:
        p: the command's parser.
        arch: whether to declare --arch; False for a command whose positional MODEL names the builder.
    """
    if arch:
        p.add_argument(
            "--arch", type=model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)"
        )
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")


def add_device(p: argparse.ArgumentParser) -> None:
    """Declare --device, checked against the devices this machine has (`device_arg`).

    Args:
        p: the command's parser.
    """
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
    """Declare --resize, --crop, --mean and --std: the preprocessing for a checkpoint that records none.

    See `PRESET_HELP` for how they combine with the weights' own preset.

    Args:
        p: the command's parser; the options go into a "preprocessing" group.
    """
    group = p.add_argument_group("preprocessing", PRESET_HELP)
    group.add_argument("--resize", type=resize_arg, metavar="N", help="resize the shorter side to N px")
    group.add_argument("--crop", type=side_arg, metavar="N", help="then center-crop N x N px")
    group.add_argument("--mean", type=finite_float, nargs="+", metavar="M", help="per channel, e.g. 0.485 0.456 0.406")
    group.add_argument("--std", type=positive_float, nargs="+", metavar="S", help="per channel, e.g. 0.229 0.224 0.225")


def preset_given(args: argparse.Namespace) -> bool:
    """Tell whether any of --resize, --crop, --mean, --std was given.

    Args:
        args: the parsed arguments of a command that called `add_preset`.

    Returns:
        True when at least one of the four options was given.
    """
    return any(getattr(args, name) is not None for name in ("resize", "crop", "mean", "std"))


def check_preset(args: argparse.Namespace, *, image_size: bool = True) -> None:
    """Refuse a combination of the preset options that is wrong whatever the weights are, before anything is loaded.

    Args:
        args: the parsed arguments of a command that called `add_preset`.
        image_size: True for a command whose --image-size is a crop (predict, evaluate, embed): --crop replaces it,
            so giving it with --resize or --crop is refused.

    Raises:
        UsageError: --image-size given with --resize or --crop, or --crop larger than --resize (exit 2).
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
    """Return how many processes torchrun started.

    Returns:
        The world size, 1 outside torchrun.
    """
    return torchrun().world


def rank() -> int:
    """Return this process's rank under torchrun.

    Returns:
        The rank, 0 outside torchrun (the process that prints the results).
    """
    return torchrun().rank


def run_device(args: argparse.Namespace) -> str:
    """Pick the device a command runs on: --device, else CUDA when available, else the CPU.

    Args:
        args: the parsed arguments of a command that called `add_device`.

    Returns:
        The device name: --device as given, "cuda" (under torchrun "cuda:LOCAL_RANK", this process's GPU) or "cpu".
    """
    import torch

    if args.device is not None:
        return str(args.device)
    if not torch.cuda.is_available():
        return "cpu"
    launch = torchrun()
    return f"cuda:{launch.local_rank}" if launch.world > 1 else "cuda"


@contextmanager
def closing_process_group() -> Iterator[None]:
    """End the process group a library call may start under torchrun, however the call ends.

    Yields:
        Nothing; the `with` block runs the library call. On leaving it, whether the call returned or raised, an
            initialized process group is destroyed.
    """
    import torch.distributed as dist

    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def load_model(args: argparse.Namespace, device: str, *, classifier: bool) -> Loaded:
    """Load the model, preset and labels that --weights names, by `vggnet.models.checkpoint.load`'s rules.

    Args:
        args: the parsed arguments of a command that called `add_weights` (--sha256 may be absent: lpips has none).
        device: where to put the model ("cpu", "cuda", ...).
        classifier: True when the command uses fc8's outputs (predict, evaluate): a features-only record is refused.

    Returns:
        The loaded model with its preset, class names, architecture and source; --arch defaults to the source's own.

    Raises:
        UsageError: --arch contradicts the architecture the weights record (exit 2); the message names both.
    """
    from vggnet.models.checkpoint import load

    try:  # lpips takes no --sha256
        return load(args.weights, arch=args.arch, device=device, progress=not args.quiet,
                    sha256=getattr(args, "sha256", None), classifier=classifier)  # fmt: skip
    except ArchMismatch as err:
        raise UsageError(err.explain("--arch ")) from err


def run_preset(args: argparse.Namespace, loaded: Loaded, image_size: int | None = None) -> ImageClassification:
    """Build the preprocessing to run with: the weights' own preset, changed by --resize, --crop, --mean and --std.

    See `PRESET_HELP`: one of --resize/--crop alone keeps the preset's crop/resize ratio; both are taken as given.

    Args:
        args: the parsed arguments of a command that called `add_preset`.
        loaded: what `load_model` returned; its preset is the starting point and its model gives the channel count.
        image_size: --image-size, the crop side (the resize follows the preset's ratio); None keeps the preset's.

    Returns:
        The preset: unchanged when none of the four options was given.

    Raises:
        UsageError: --resize alone gives a crop under `MIN_SIZE`, or --mean/--std has not one value per input
            channel of the model (exit 2).
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
