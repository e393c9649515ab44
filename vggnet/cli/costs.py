"""summary, bench: what a model costs, layer by layer on the meta device, and in img/s on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vggnet.cli.args import bounded_size_arg, model_arg, positive, size_arg
from vggnet.cli.output import print_json
from vggnet.errors import EXIT_OK
from vggnet.models.config import ARCHS

# --- summary --------------------------------------------------------------------------------------


def add_summary(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet summary`'s description and arguments.

    The arguments: MODEL, --input-size, --batch-size, --num-classes, --json, --plot.

    Args:
        p: the `summary` subcommand's parser, filled in place.
    """
    p.description = (
        "One row per layer (the paper's names: conv1_1 ... pool5, avgpool, fc6 ... fc8) with its "
        "output shape, receptive field (side, jump and start in input pixels), parameters, multiply-adds and "
        "activation memory, then the totals. Computed on the "
        "meta device: no weights, no memory, any input size."
    )
    p.add_argument("arch", type=model_arg, metavar="MODEL", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--input-size", type=size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--batch-size", type=positive, default=1, metavar="B", help="for the activation memory")
    p.add_argument("--num-classes", type=positive, default=1000, metavar="K", help="width of fc8 (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw parameters, MACs and receptive field per layer (.svg; .png with matplotlib)",
    )


def run_summary(args: argparse.Namespace) -> int:
    """Print a model's per-layer table (shapes, receptive field, parameters, MACs, memory), or JSON.

    Args:
        args: the parsed arguments of `vggnet summary` (see `add_summary`).

    Returns:
        0 (`EXIT_OK`); computed on the meta device, nothing is downloaded. --plot also writes the picture.
    """
    from vggnet.models.summary import format_summary, plot_summary, summarize

    summary = summarize(args.arch, args.input_size, batch_size=args.batch_size, num_classes=args.num_classes)
    if args.plot is not None:
        plot_summary(summary, args.plot)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    if args.plot is not None and not args.quiet:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


# --- bench ----------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16", "int8")


def add_bench(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet bench`'s description and arguments.

    The arguments: --arch, --batch-size, --image-size, --device, --dtype, --compile, --iters, --rounds,
    --no-torchvision, --json.

    Args:
        p: the `bench` subcommand's parser, filled in place.
    """
    p.description = (
        "Times vggnet eager, vggnet optimize_for_inference and, when installed, torchvision on "
        "the same random input and weights, in interleaved rounds (median), and the share of the device's "
        "matmul peak (measured in the same run) each reaches. Random weights: nothing is downloaded."
    )
    p.add_argument("--arch", type=model_arg, default="vgg16", metavar="MODEL", help="default vgg16")
    p.add_argument("--batch-size", type=positive, default=1, metavar="B", help="default 1")
    p.add_argument("--image-size", type=bounded_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument(
        "--dtype",
        choices=_DTYPES,
        help="default bfloat16 on CUDA GPUs that have it, float32 on CPU; int8 (CPU, needs torchao) adds "
        "'vggnet int8' to float32 candidates, with its agreement with float32",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the optimized model and torchvision (default: on for CUDA, off for CPU)",
    )
    p.add_argument("--iters", type=positive, default=20, metavar="N", help="timed calls per candidate (default 20)")
    p.add_argument("--rounds", type=positive, default=5, metavar="R", help="interleaved rounds (default 5)")
    p.add_argument("--no-torchvision", action="store_true", help="skip the torchvision figures")
    p.add_argument("--json", action="store_true", help="print the report as a JSON object")


def run_bench(args: argparse.Namespace) -> int:
    """Time vggnet eager, vggnet optimized and torchvision on random weights, and print the report.

    Args:
        args: the parsed arguments of `vggnet bench` (see `add_bench`).

    Returns:
        0 (`EXIT_OK`).
    """
    import torch

    from vggnet.deploy import bench

    report = bench.run_bench(
        args.arch,
        batch_size=args.batch_size,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        compile=args.compile,
        iters=args.iters,
        rounds=args.rounds,
        image_size=args.image_size,
        with_torchvision=not args.no_torchvision,
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print(bench.format_report(report))
    return EXIT_OK
