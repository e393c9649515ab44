"""convert, export: weights written in another format or layout, a model written as a deployable artifact."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vggnet.cli.args import (
    add_preset,
    add_weights,
    check_preset,
    model_arg,
    positive,
    preset_given,
    run_preset,
    side_arg,
)
from vggnet.cli.output import print_json
from vggnet.errors import EXIT_OK, UsageError
from vggnet.models.config import ARCHS, MIN_SIZE, SOURCE_RULES

if TYPE_CHECKING:
    import torch

# Choices whose home module imports torch, spelled here so that a bad one is answered at once;
# tests/cli/test_parsers.py keeps them equal to vggnet.deploy.export.EXPORT_FORMATS and vggnet.hub.WRITE_SUFFIXES.
EXPORT_FORMATS = ("onnx", "pt2", "torchscript", "aoti")
WRITE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# --- convert ---------------------------------------------------------------------------------------


def add_convert(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet convert`'s description and arguments.

    The arguments: SRC, DST, --layout, --sha256, --json.

    Args:
        p: the `convert` subcommand's parser, filled in place.
    """
    p.description = (
        "Read weights from SRC and write them to DST in the format DST's suffix names (.safetensors, "
        "or .pth/.pt/.bin for PyTorch's zip format). SRC is "
        f"{SOURCE_RULES}; a file's format (PyTorch zip or pickle, safetensors, Keras .h5) is read from its content. "
        "The written file is read back and compared, and its SHA-256 printed."
    )
    p.add_argument("src", metavar="SRC", help="the weights to read")
    p.add_argument("dst", metavar="DST", help="the file to write (.safetensors, .pth, .pt, .bin)")
    p.add_argument("--layout", choices=("vggnet", "timm"), default="vggnet", help="the keys DST gets (default vggnet)")
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) SRC must have")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run_convert(args: argparse.Namespace) -> int:
    """Convert SRC's weights to DST's format and layout, then print DST's SHA-256 (or a JSON object).

    Args:
        args: the parsed arguments of `vggnet convert` (see `add_convert`).

    Returns:
        0 (`EXIT_OK`); a file that cannot be read or written raises (exit 1 through `main`).

    Raises:
        UsageError: DST's suffix names no format vggnet writes (.safetensors, .pth, .pt, .bin); checked before torch
            is imported (exit 2).
    """
    if Path(args.dst).suffix.lower() not in WRITE_SUFFIXES:  # before the library (and torch) is loaded
        raise UsageError(
            f"cannot tell the format of {args.dst!r} from its suffix; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    from vggnet.deploy.convert import convert

    done = convert(args.src, args.dst, layout=args.layout, sha256=args.sha256, progress=not args.quiet)
    if args.json:
        print_json(
            {"source": done.source, "path": str(done.path), "sha256": done.sha256, "bytes": done.size,
             "layout": done.layout, "tensors": done.tensors}
        )  # fmt: skip
    else:
        print(f"{done.sha256}  {done.path}")
    return EXIT_OK


# --- export ---------------------------------------------------------------------------------------


def add_export(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet export`'s description and arguments.

    The arguments: ARCH, OUT, --format, the weights, the shapes, --dtype, --with-preset and the preprocessing options.

    Args:
        p: the `export` subcommand's parser, filled in place.
    """
    p.description = (
        "Build ARCH with --weights (" + SOURCE_RULES + ") and write OUT in --format, then run OUT once "
        "on a random batch against eager PyTorch (onnxruntime for ONNX, when installed) and print the largest "
        "difference and OUT's SHA-256. --with-preset puts the weights' preset (a vggnet checkpoint's own; see "
        "the preprocessing options) inside the graph, which then takes uint8 images of any size."
    )
    p.add_argument("arch", type=model_arg, metavar="ARCH", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("out", metavar="OUT", help="the file to write")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, dest="fmt", help="what to write")
    add_weights(p, arch=False)
    p.add_argument(
        "--dynamic-batch", action=argparse.BooleanOptionalAction, default=True, help="any batch size (default on)"
    )
    p.add_argument("--dynamic-size", action="store_true", help="any height and width from 64 px (ONNX, pt2, aoti)")
    size = "the input side (default: the preset's crop, 224 for ImageNet's; at least 64 with --dynamic-size)"
    p.add_argument("--image-size", type=side_arg, metavar="N", help=size)
    p.add_argument("--batch-size", type=positive, default=1, metavar="B", help="the batch with --no-dynamic-batch")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weights' dtype")
    p.add_argument(
        "--with-preset", action="store_true", help="take uint8 images: resize, crop and normalize inside the graph"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    add_preset(p)


def run_export(args: argparse.Namespace) -> int:
    """Export ARCH with its weights to OUT, run OUT once against eager PyTorch, print the difference and SHA-256.

    Args:
        args: the parsed arguments of `vggnet export` (see `add_export`).

    Returns:
        0 (`EXIT_OK`), also when onnxruntime is missing and only the check was skipped (a warning says so).

    Raises:
        UsageError: --with-preset with torchscript, or a preprocessing option without --with-preset (exit 2).
    """
    import torch

    from vggnet.data.outputs import check_output
    from vggnet.deploy.export import check_export, check_shapes, example_images, export, with_preset
    from vggnet.hub import file_sha256
    from vggnet.models.checkpoint import load

    if args.with_preset and args.fmt == "torchscript":
        raise UsageError("--with-preset works with --format onnx, pt2 or aoti, not torchscript")
    if preset_given(args) and not args.with_preset:
        raise UsageError("--resize, --crop, --mean and --std shape the preset put in the graph: add --with-preset")
    check_preset(args, image_size=False)
    # before any weights are fetched: OUT is a file vggnet may replace, the shapes ones the exporter takes
    check_output(args.out)
    # no --image-size: the preset's crop, known once the weights are read; `export` checks that one
    check_shapes(dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
                 image_size=args.image_size or 2 * MIN_SIZE, batch_size=args.batch_size)  # fmt: skip
    loaded = load(args.weights, arch=args.arch, sha256=args.sha256, progress=not args.quiet)
    preset = run_preset(args, loaded)
    # the example's side: a dynamic one starts at 64 px (see deploy/export.py)
    size = args.image_size or max(preset.crop_size, 2 * MIN_SIZE if args.dynamic_size else 0)
    dtype = getattr(torch, args.dtype)
    model = loaded.model.eval()
    path = export(
        model, args.out, args.fmt, dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
        image_size=size, batch_size=args.batch_size, dtype=dtype, include_preset=args.with_preset, preset=preset,
    )  # fmt: skip
    reference: torch.nn.Module = model.to(dtype)
    if args.with_preset:
        reference = with_preset(reference, preset)
    batch = 2 if args.dynamic_batch else args.batch_size
    images = example_images(batch, size, include_preset=args.with_preset, dtype=dtype, seed=1)
    try:
        diff: float | None = check_export(path, args.fmt, reference, [images])
    except ImportError as err:  # onnxruntime is optional: the file is written, only the check is skipped
        logging.getLogger("vggnet").warning("not checked: %s", err)
        diff = None
    report = {
        "arch": loaded.arch, "weights": loaded.weights, "format": args.fmt, "path": str(path),
        "sha256": file_sha256(path), "bytes": path.stat().st_size, "dynamic_batch": args.dynamic_batch,
        "dynamic_size": args.dynamic_size, "image_size": size, "dtype": args.dtype,
        "with_preset": args.with_preset, "max_abs_diff": diff,
    }  # fmt: skip
    if args.json:
        print_json(report)
    else:
        checked = "not checked" if diff is None else f"max |artifact - eager| = {diff:.3g} on a batch of {batch}"
        print(f"{report['sha256']}  {path}  ({args.fmt}, {report['bytes'] / 2**20:.1f} MiB; {checked})")
    return EXIT_OK
