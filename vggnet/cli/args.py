"""The options the commands share: exit statuses, argument types, the option blocks, and what they resolve to.

An argument type raises `argparse.ArgumentTypeError` saying what it expected, so a bad value exits 2 before
anything runs; `UsageError` does the same for a bad combination found later. `--weights`/`--arch`/`--sha256` resolve to
a model by `checkpoint.load`'s rules, `--device` to a device (this process's GPU under torchrun).

Nothing here imports torch at import time: the argument types answer a bad value at once, and what needs
torch (a device, a model) imports it when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vggnet.data.constants import MAX_SIZE
from vggnet.errors import ArchMismatch, UsageError
from vggnet.models.config import MIN_SIZE, SOURCE_RULES, check_arch
from vggnet.settings import torchrun

if TYPE_CHECKING:
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
