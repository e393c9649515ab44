"""The `vggnet` command line: argument parsing and printing only; the work is done by library functions.

`COMMANDS` below is the table of contents: each command is an `add_<name>(parser)` / `run_<name>(args)` pair in
the module named after what its commands deal with, loaded only when that command runs (or shows its help), so
`vggnet --help` and every argument error answer without importing torch. How to add one:

1. Write the pair in that module (or a new one), in the order of the table. `add_<name>(p)` sets
   `p.description` and declares the arguments, with the shared types and blocks of `args.py`
   (`add_weights`, `add_device`, `positive`, ...); `run_<name>(args) -> int` calls one library function
   and prints the result (`output.py`). At the top of the module import only what the parser needs and
   what imports no torch (`vggnet.models.config`, `vggnet.data.constants`, ...); import the library inside
   `run_<name>`, so that a command imports only what it runs.
2. Add one line `"<name>": ("<module>", "<one-line help>"),` to `COMMANDS`.
3. Raise `vggnet.errors.UsageError` for a bad combination of arguments (exit 2). Every other error exits
   by `vggnet.errors.EXIT_CODES`: 2 for a `UsageError` (a bad value, a missing path, a bad folder layout),
   1 for anything else. `main()` prints one line on stderr, with a traceback only under `--debug`. Do not
   call `sys.exit` and do not catch these yourself.
4. Respect `args.quiet` (no progress bars, no chatter; pass `progress=not args.quiet`) and print
   results to stdout, everything else to stderr. Library code logs; only this package prints.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import cast

from vggnet import __version__
from vggnet.cli.args import common_options
from vggnet.cli.output import PROG, error
from vggnet.errors import EXIT_OK, UsageError, exit_code

__all__ = ["COMMANDS", "build_parser", "main"]

RunCommand = Callable[[argparse.Namespace], int]

# name -> (the module of vggnet.cli holding add_<name> and run_<name>, its line in `vggnet --help`);
# the order is the order of `vggnet --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("costs", "per-layer shapes, parameters, MACs and memory of a model (instant, offline)"),
    "list": ("checkpoints", "every model and its weights: accuracy, size, cost, and whether they are cached"),
    "predict": ("images", "classify images: top-k labels with probabilities (files, folders, globs, lists; streamed)"),
    "evaluate": ("images", "accuracy on a labelled folder: acc@1, acc@5, per class, loss, confusion matrix"),
    "embed": ("images", "features of a named layer (fc7, pool5, ...) for every image, in .npy shards with an index"),
    "download": ("checkpoints", "prefetch checkpoints into the cache, or build a mirror directory"),
    "verify": ("checkpoints", "re-hash every cached checkpoint: ok, corrupt or unknown (exit 1 if any is corrupt)"),
    "cache": ("checkpoints", "what is cached and how big it is; remove files"),
    "bench": ("costs", "img/s and latency: vggnet eager vs optimize_for_inference vs torchvision, in one run"),
    "finetune": ("training", "fine-tune a model on your own images (DATA/train/<class>/, DATA/val/<class>/)"),
    "lpips": ("perception", "the LPIPS perceptual distance between two images"),
    "explain": ("perception", "where the model looked: a class-activation map over the image (needs vggnet[explain])"),
    "features": ("perception", "a grid of a layer's strongest feature maps for an image"),
    "convert": ("artifacts", "write weights in another format (safetensors, .pth) or layout (timm)"),
    "export": ("artifacts", "export a model to ONNX, torch.export (pt2), TorchScript or AOTInductor"),
}

# what may stand before the command: the global options, none of which takes a value
_GLOBAL_FLAGS = frozenset({"--debug", "-q", "--quiet", "--version", "-h", "--help"})


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The `vggnet` parser: the global options, then one subparser per entry of `COMMANDS`.

    Args:
        commands: the commands whose arguments are declared (their modules are imported); None: all of them.
            The others are listed with their help line only.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The VGG family for PyTorch: inspect the architecture, classify images, manage checkpoints.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common_options()], help=help, description=help)
        if commands is None or name in commands:
            getattr(_module(name), f"add_{name}")(p)
    return parser


def _module(name: str) -> object:
    return importlib.import_module(f"vggnet.cli.{COMMANDS[name][0]}")


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` names: its first argument that is not a global option (None if it names none)."""
    for arg in argv:
        if arg not in _GLOBAL_FLAGS:
            return arg if arg in COMMANDS else None
    return None


def _configure_logging(debug: bool, quiet: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s" if debug else f"{PROG}: %(message)s"))
    logger = logging.getLogger("vggnet")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `vggnet` command with `argv` and return its exit status (0 done, 1 failed, 2 usage).

    Args:
        argv: the arguments, without the program name (default `sys.argv[1:]`).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_of(argv)
    parser = build_parser([command] if command is not None else [])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help (0) and on bad arguments (2)
        return exit_.code if isinstance(exit_.code, int) else 2
    logger = logging.getLogger("vggnet")
    level = logger.level
    handler = _configure_logging(args.debug, args.quiet)
    run = cast(RunCommand, getattr(_module(args.command), f"run_{args.command}"))
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
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        if len(lines) > 1:  # a library's page of text (torch's, say): its first line, the rest under --debug
            message = f"{type(err).__name__}: {lines[0]} (the rest with --debug)"
        if isinstance(err, UsageError):
            message += f" (see '{PROG} {args.command} --help')"
        error(message)
        return exit_code(err)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
