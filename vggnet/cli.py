"""The `vggnet` command line: argument parsing and printing only; the work is done by library functions.

How to add a command (issue 4 adds `finetune`, issue 6 adds `bench`):

1. Write two functions next to the others, in the same order as the table below:
   `_add_<name>(sub)` creates the parser with `sub.add_parser("<name>", help=..., parents=[_COMMON])`
   and declares its arguments; `_run_<name>(args) -> int` calls the library and prints the result.
   Import library modules inside `_run_<name>` so `vggnet --help` stays fast.
2. Add one line `"<name>": (_add_<name>, _run_<name>),` to `COMMANDS`.
3. Raise `UsageError` for a bad combination of arguments (exit 2). A `ValueError` from the library
   also exits 2 (unknown model or weight, bad size); `FileNotFoundError`, `OSError`, `RuntimeError`,
   `ChecksumError`, `DownloadError` exit 1. `main()` prints one line on stderr, with a traceback only
   under `--debug`. Do not call `sys.exit` and do not catch these yourself.
4. Respect `args.quiet` (no progress bars, no chatter; pass `progress=not args.quiet`) and print
   results to stdout, everything else to stderr. Library code logs; only this module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import ARCHS, MIN_SIZE

__all__ = ["COMMANDS", "UsageError", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

PROG = "vggnet"


class UsageError(Exception):
    """The arguments make no sense together: exit status 2, the message says what to change."""


# --- shared options --------------------------------------------------------------------------------

# Every subcommand takes --debug and --quiet too (`vggnet summary vgg16 --quiet`); SUPPRESS keeps a
# subcommand's default from overwriting the value given before the subcommand (`vggnet -q summary`).
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
_COMMON.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# --- the commands ----------------------------------------------------------------------------------

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
AddParser = Callable[["SubParsers"], None]
RunCommand = Callable[[argparse.Namespace], int]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, allow_nan=False))


def _size_arg(text: str) -> tuple[int, int]:
    """argparse type for "224" or "224x320" (height x width)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW in pixels, got {text!r}") from None
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: VGG needs at least {MIN_SIZE} px per side (five 2x2 max-pools); give N or HxW, N >= {MIN_SIZE}"
        )
    return sides[0], sides[1]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _model_arg(text: str) -> str:
    """argparse type for a builder name, case-insensitive, listing the valid ones when unknown."""
    if text.lower() not in ARCHS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; valid: {', '.join(ARCHS)}")
    return text.lower()


# summary ---------------------------------------------------------------------------------------------


def _add_summary(sub: SubParsers) -> None:
    p = sub.add_parser(
        "summary",
        parents=[_COMMON],
        help="per-layer shapes, parameters, MACs and memory of a model (instant, offline)",
        description="One row per layer (the paper's names: conv1_1 ... pool5, avgpool, fc6 ... fc8) with its "
        "output shape, parameters, multiply-adds and activation memory, then the totals. Computed on the "
        "meta device: no weights, no memory, any input size.",
    )
    p.add_argument("arch", type=_model_arg, metavar="MODEL", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--input-size", type=_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B", help="for the activation memory")
    p.add_argument("--num-classes", type=_positive, default=1000, metavar="K", help="width of fc8 (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw parameters and MACs per layer (.svg; .png with matplotlib)"
    )


def _run_summary(args: argparse.Namespace) -> int:
    from .summary import format_summary, plot_summary, summarize

    summary = summarize(args.arch, args.input_size, batch_size=args.batch_size, num_classes=args.num_classes)
    if args.plot is not None:
        plot_summary(summary, args.plot)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    if args.plot is not None and not args.quiet:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


# name -> (declare its arguments, run it); the order is the order of `vggnet --help`.
COMMANDS: dict[str, tuple[AddParser, RunCommand]] = {
    "summary": (_add_summary, _run_summary),
}


# --- main ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The VGG family for PyTorch: inspect the architecture, classify images, manage checkpoints.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _exit_status(err: BaseException) -> int:
    """Exit 2 for what the user can fix in the command line, 1 for anything that failed."""
    return EXIT_USAGE if isinstance(err, (UsageError, ValueError)) else EXIT_FAILURE


def _configure_logging(debug: bool, quiet: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s" if debug else f"{PROG}: %(message)s"))
    logger = logging.getLogger("vggnet")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `vggnet` command with `argv` (default: sys.argv[1:]) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and on bad arguments (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logger = logging.getLogger("vggnet")
    level = logger.level
    handler = _configure_logging(args.debug, args.quiet)
    _, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # `vggnet list | head`: the reader is gone, nothing left to say
        return EXIT_OK
    except Exception as err:
        if args.debug:
            import traceback

            traceback.print_exc()
        message = str(err) or type(err).__name__
        if isinstance(err, UsageError):
            message += f" (see '{PROG} {args.command} --help')"
        _error(message)
        return _exit_status(err)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
