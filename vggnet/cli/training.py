"""finetune: train a model on your own labelled folders, settings straight into `FinetuneConfig`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vggnet.cli.args import (
    WEIGHTS_HELP,
    add_device,
    closing_process_group,
    model_arg,
    positive,
    side_arg,
    workers_arg,
)
from vggnet.errors import EXIT_OK
from vggnet.models.config import HEADS

# Choices whose home module imports torch, spelled here so that a bad one is answered at once;
# tests/cli/test_parsers.py keeps them equal to vggnet.train.finetune's MODES and AUGMENTS.
MODES = ("linear", "full")
AUGMENTS = ("none", "light", "standard")

# FinetuneConfig's fields that are `vggnet finetune` options of the same name (a test keeps them in step;
# `data` is the positional DATA, `progress` is the global --quiet, `on_epoch` is Python's: the CLI prints)
FINETUNE_OPTIONS = (
    "arch", "weights", "epochs", "batch_size", "lr", "mode", "head", "image_size", "out", "device", "workers", "amp",
    "in_chans", "seed", "augment", "hflip", "crop_scale", "label_smoothing", "weight_decay", "warmup_epochs",
    "early_stop", "val_split", "resume", "overwrite", "plot",
)  # fmt: skip


def add_finetune(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet finetune`'s description, DATA, and its model, recipe, device and run-folder options.

    Args:
        p: the `finetune` subcommand's parser, filled in place.
    """
    p.description = (
        "Fine-tune on an ImageFolder layout: DATA/train/<class>/*.jpg|png and DATA/val/<class>/. "
        "--mode linear freezes the backbone, computes the fc7 features once and trains fc8 on them; --mode full "
        "trains every layer with augmentation. Writes OUT/best.pth (the best validation accuracy), which "
        "`vggnet predict --weights OUT/best.pth` and vggnet.train.finetune.load_finetuned read back. Under torchrun "
        "it runs data-parallel (DDP), --batch-size per process."
    )
    p.add_argument("data", type=Path, metavar="DATA", help="folder holding train/ and val/")
    p.add_argument("--arch", type=model_arg, default="vgg16", metavar="MODEL", help="default vgg16")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=WEIGHTS_HELP)
    p.add_argument("--epochs", type=positive, default=10, metavar="N", help="default 10")
    p.add_argument("--batch-size", type=positive, default=32, metavar="B", help="per process (default 32)")
    p.add_argument("--lr", type=float, metavar="LR", help="default 0.05 (linear), 0.001 (full)")
    p.add_argument("--mode", choices=MODES, default="linear", help="default linear")
    p.add_argument(
        "--head", choices=HEADS, default="vgg",
        help="vgg: fc6-fc8 (default); gap: global average pool + one Linear on the 512 channels (small data, "
        "small images); fc7: a linear probe on fc7 features (= --mode linear with the vgg head)",
    )  # fmt: skip
    p.add_argument("--image-size", type=side_arg, default=224, metavar="N", help="crop size (default 224)")
    p.add_argument("--out", type=Path, default=Path("finetune-out"), metavar="DIR", help="default ./finetune-out")
    add_device(p)
    p.add_argument("--workers", type=workers_arg, default=0, metavar="W", help="data loading processes (default 0)")
    p.add_argument(
        "--amp", action=argparse.BooleanOptionalAction,
        help="bf16 autocast (default: on for CUDA and for CPUs with native bf16, AMX-BF16 or AVX512-BF16; "
        "--no-amp trains in float32)",
    )  # fmt: skip
    p.add_argument("--in-chans", type=int, choices=(1, 3), default=3, help="1 reads the images as gray (default 3)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seeds init, order and augmentation (default 0)")
    recipe = p.add_argument_group("recipe (--mode full: augmentation)")
    recipe.add_argument(
        "--augment", choices=AUGMENTS,
        help="none: the evaluation crop; light: random crop of 60-100%% of the area + flip; standard: 8-100%% + "
        "flip (default for --mode full)",
    )  # fmt: skip
    recipe.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="horizontal flips (default: on)")
    recipe.add_argument(
        "--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="random crop area share, e.g. 0.6 1"
    )
    recipe.add_argument("--label-smoothing", type=float, default=0.0, metavar="E", help="default 0")
    recipe.add_argument("--weight-decay", type=float, default=0.0, metavar="WD", help="SGD weight decay (default 0)")
    recipe.add_argument(
        "--warmup-epochs", type=int, default=0, metavar="N", help="linear warm-up before the cosine (default 0)"
    )
    recipe.add_argument(
        "--early-stop", type=positive, metavar="PATIENCE", help="stop after this many epochs without a better val acc"
    )
    recipe.add_argument(
        "--val-split", type=float, metavar="SHARE", help="without DATA/val: hold out this share of each class (0.2)"
    )
    runs = p.add_argument_group("runs")
    runs.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pth")
    runs.add_argument(
        "--overwrite", action="store_true", help="replace the run OUT holds (kept until the new run's first checkpoint)"
    )
    runs.add_argument("--plot", type=Path, metavar="PNG", help="draw the loss and accuracy curves into PNG")


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune on DATA by `vggnet.train.finetune.finetune` and print the best validation accuracy and checkpoint.

    Args:
        args: the parsed arguments of `vggnet finetune` (see `add_finetune`).

    Returns:
        0 (`EXIT_OK`); under torchrun only rank 0 prints.
    """
    from vggnet.train.finetune import finetune

    recipe = {name: getattr(args, name) for name in FINETUNE_OPTIONS}
    if args.crop_scale is not None:
        recipe["crop_scale"] = tuple(args.crop_scale)
    # the per-epoch figures are logged at INFO; --quiet leaves the level to the `vggnet` logger's (ERROR)
    log = logging.getLogger("vggnet.train.finetune")
    level = log.level
    log.setLevel(logging.NOTSET if args.quiet else logging.INFO)
    try:
        with closing_process_group():
            result = finetune(args.data, progress=not args.quiet, **recipe)
    finally:
        log.setLevel(level)  # a caller's own setting (or the next main() in this process) is not overridden
    if result.rank == 0:  # the per-epoch figures went to stderr as they came
        stopped = " (stopped early)" if result.stopped_early else ""
        print(
            f"best val accuracy {result.best_val_acc:.2f}% at epoch {result.best_epoch}{stopped}: {result.checkpoint}"
        )
    return EXIT_OK
