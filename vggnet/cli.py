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
import logging
import sys
from collections.abc import Sequence
from typing import Callable

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

AddParser = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
RunCommand = Callable[[argparse.Namespace], int]

# name -> (declare its arguments, run it); the order is the order of `vggnet --help`.
COMMANDS: dict[str, tuple[AddParser, RunCommand]] = {}


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
