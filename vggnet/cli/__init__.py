"""The `vggnet` command line: argument parsing and printing only; the work is done by library functions.

`COMMANDS` below is the table of contents: each command is an `add_<name>(sub)` / `run_<name>(args)` pair in
the module named after what its commands deal with. How to add one:

1. Write the pair in that module (or a new one), in the order of the table. `add_<name>` creates the
   parser with `add_command(sub, "<name>", help=..., description=...)` and declares its arguments, with
   the shared types and blocks of `args.py` (`add_weights`, `add_device`, `positive`, ...);
   `run_<name>(args) -> int` calls one library function and prints the result (`output.py`).
   Import library modules at the top of the module; keep an import inside a function only for an
   optional extra that is not a vggnet module (PIL).
2. Add one line `"<name>": (module.add_<name>, module.run_<name>),` to `COMMANDS`.
3. Raise `UsageError` for a bad combination of arguments (exit 2). A `ValueError` from the library
   also exits 2 (unknown model or weight, bad size); `FileNotFoundError`, `OSError`, `RuntimeError`,
   `ChecksumError`, `DownloadError`, `BadCheckpointError` (an unsafe or unusable checkpoint) exit 1.
   `main()` prints one line on stderr, with a traceback only under `--debug`. Do not call `sys.exit`
   and do not catch these yourself.
4. Respect `args.quiet` (no progress bars, no chatter; pass `progress=not args.quiet`) and print
   results to stdout, everything else to stderr. Library code logs; only this package prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from vggnet import __version__
from vggnet.cli import artifacts, checkpoints, costs, images, perception, training
from vggnet.cli.args import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, SubParsers, UsageError
from vggnet.cli.output import PROG, error
from vggnet.errors import BadCheckpointError, WeightsFileNotFound

__all__ = [
    "COMMANDS",
    "build_parser",
    "main",
]

AddParser = Callable[[SubParsers], None]
RunCommand = Callable[[argparse.Namespace], int]

# name -> (declare its arguments, run it); the order is the order of `vggnet --help`.
COMMANDS: dict[str, tuple[AddParser, RunCommand]] = {
    "summary": (costs.add_summary, costs.run_summary),
    "list": (checkpoints.add_list, checkpoints.run_list),
    "predict": (images.add_predict, images.run_predict),
    "evaluate": (images.add_evaluate, images.run_evaluate),
    "embed": (images.add_embed, images.run_embed),
    "download": (checkpoints.add_download, checkpoints.run_download),
    "verify": (checkpoints.add_verify, checkpoints.run_verify),
    "cache": (checkpoints.add_cache, checkpoints.run_cache),
    "bench": (costs.add_bench, costs.run_bench),
    "finetune": (training.add_finetune, training.run_finetune),
    "lpips": (perception.add_lpips, perception.run_lpips),
    "explain": (perception.add_explain, perception.run_explain),
    "features": (perception.add_features, perception.run_features),
    "convert": (artifacts.add_convert, artifacts.run_convert),
    "export": (artifacts.add_export, artifacts.run_export),
}


def build_parser() -> argparse.ArgumentParser:
    """The `vggnet` parser: the global options, then one subparser per entry of `COMMANDS`."""
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
    """Exit 2 for what the user can fix in the command line, 1 for anything that failed.

    A checkpoint vggnet refuses (pickled code, NaN, not a state dict) is a bad file, as a corrupt one: 1.
    """
    if isinstance(err, BadCheckpointError):
        return EXIT_FAILURE
    return EXIT_USAGE if isinstance(err, (UsageError, ValueError, WeightsFileNotFound)) else EXIT_FAILURE


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
        error("interrupted")
        return 130
    except BrokenPipeError:  # `vggnet list | head`: the reader is gone, nothing left to say
        return EXIT_OK
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        message = str(err) or type(err).__name__
        if isinstance(err, UsageError):
            message += f" (see '{PROG} {args.command} --help')"
        error(message)
        return _exit_status(err)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
