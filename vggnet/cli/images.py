"""predict, evaluate, embed: a model run over many images, decoded in worker processes, shared out under torchrun."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vggnet.batch.output import FORMATS, check_fresh
from vggnet.cli.args import (
    add_device,
    add_preset,
    add_weights,
    check_preset,
    closing_process_group,
    load_model,
    positive,
    rank,
    run_device,
    run_preset,
    side_arg,
    workers_arg,
    world,
)
from vggnet.cli.output import print_json, print_predictions
from vggnet.data.outputs import check_output
from vggnet.errors import EXIT_FAILURE, EXIT_OK, UsageError
from vggnet.models.config import SOURCE_RULES

if TYPE_CHECKING:
    from vggnet.batch.embed import EmbedSummary
    from vggnet.batch.evaluate import Evaluation
    from vggnet.batch.predict import PredictSummary
    from vggnet.data.transforms import ImageClassification
    from vggnet.models.checkpoint import Loaded

# --- what the three share --------------------------------------------------------------------------


def _add_run_options(p: argparse.ArgumentParser, batch_size: int) -> None:
    """--arch, --weights, --sha256, --device, --batch-size, --workers, --image-size, and the preset's options."""
    add_weights(p)
    add_device(p)
    p.add_argument("--batch-size", type=positive, default=batch_size, metavar="B", help=f"default {batch_size}")
    workers = "processes decoding images (default: the cores the model leaves, up to 8)"
    p.add_argument("--workers", type=workers_arg, metavar="W", help=workers)
    p.add_argument(
        "--image-size", type=side_arg, metavar="N", help="crop size (default: the weights', 224); resize to N*256/224"
    )
    add_preset(p)


def _add_image_sources(p: argparse.ArgumentParser, metavar: str) -> None:
    p.add_argument("images", nargs="*", metavar=metavar, help="image files, folders, glob patterns, or - for stdin")
    p.add_argument("--from-file", type=Path, metavar="LIST", help="a text file of image paths, one per line")


def _images(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """(images, list file): listed here before any weights are fetched; under torchrun, as given (rank 0 lists)."""
    from vggnet.data.images import list_images

    if not args.images and args.from_file is None:
        raise UsageError("name the images: IMAGE ... (files, folders, globs), --from-file LIST, or - for stdin")
    if world() > 1:
        return args.images, args.from_file
    return list_images(args.images, from_file=args.from_file), None


def _model(args: argparse.Namespace, *, classifier: bool = True) -> tuple[str, Loaded, ImageClassification]:
    """The device, the model --weights names, and its preset at --image-size or --resize/--crop/--mean/--std."""
    check_preset(args)
    device = run_device(args)
    loaded = load_model(args, device, classifier=classifier)
    return device, loaded, run_preset(args, loaded, args.image_size)


def _finished(args: argparse.Namespace, summary: PredictSummary | EmbedSummary, rest: str) -> int:
    """Rank 0 says how a streamed run went (unless --quiet); exit 1 when an image could not be read.

    Rank 0 alone reports a failure: another rank failing first would make torchrun stop rank 0 mid-sentence.
    """
    if rank() == 0 and not args.quiet:
        skipped = f", {summary.skipped} already there" if args.resume else ""
        print(f"{summary.images} images ({summary.failed} unreadable{skipped}){rest}", file=sys.stderr)
    return EXIT_FAILURE if summary.failed and rank() == 0 else EXIT_OK


# --- predict ---------------------------------------------------------------------------------------


def add_predict(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet predict`'s description and arguments.

    The arguments: the images, the model and run options, --topk, --json, and --output/--format/--resume/--overwrite.

    Args:
        p: the `predict` subcommand's parser, filled in place.
    """
    p.description = (
        "Classify images with a model and its weights: the weights' preprocessing, then the top-k "
        "labels with their probabilities. IMAGE is a file, a folder (its images at any depth), a glob pattern "
        "or - (paths one per line on stdin); --from-file reads paths from a list. Images are decoded in "
        "--workers processes while the model runs. Without --output the results go to stdout; with "
        "--output FILE one line per image is written as it comes (JSON Lines, or CSV), --resume skips the "
        "images FILE holds, and under torchrun each process does its share. An unreadable image is "
        'reported (in FILE with an "error", and on stderr) and the run goes on; the exit status is then 1. '
        f"--weights is {SOURCE_RULES}. The model is the one the weights name (a vggnet checkpoint's, a "
        "state dict's keys), else --arch (default vgg16). A checkpoint written by vggnet.save or vggnet "
        "finetune brings its labels and preprocessing; a plain state dict's labels are ImageNet's when it has "
        "1000 outputs, and its preprocessing ImageNet's unless --resize, --crop, --mean, --std say otherwise."
    )
    _add_image_sources(p, "IMAGE")
    _add_run_options(p, batch_size=16)
    p.add_argument("--topk", type=positive, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON object (without --output)")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write one line per image to FILE as it comes")
    p.add_argument("--format", choices=FORMATS, help="of --output (default: csv for a .csv FILE, else jsonl)")
    p.add_argument("--resume", action="store_true", help="keep what --output holds; classify only the others")
    p.add_argument("--overwrite", action="store_true", help="replace what --output holds (else it is refused)")


def run_predict(args: argparse.Namespace) -> int:
    """Classify the images and print their top-k labels, or write one line per image to --output.

    Args:
        args: the parsed arguments of `vggnet predict` (see `add_predict`).

    Returns:
        0 (`EXIT_OK`) when every image was read; 1 (`EXIT_FAILURE`) when any could not be (each reported, the
            others still classified).

    Raises:
        UsageError: --resume, --overwrite or --format without --output, --json with --output, no --output under
            torchrun, or no image named (exit 2).
    """
    from vggnet.batch.engine import Session
    from vggnet.batch.predict import iter_predictions, predict_images

    if args.output is None and (args.resume or args.overwrite or args.format is not None):
        raise UsageError("--resume, --overwrite and --format are for --output FILE")
    if args.output is not None and args.json:
        raise UsageError("--json prints to stdout; with --output FILE choose --format jsonl or csv")
    if args.output is None and world() > 1:
        raise UsageError("under torchrun, give --output FILE: each process writes its part and rank 0 merges them")
    if args.output is not None and rank() == 0:  # before any weights are fetched
        check_fresh(args.output, resume=args.resume, overwrite=args.overwrite)
    images, from_file = _images(args)
    device, classifier, preset = _model(args)
    categories = classifier.categories
    assert categories is not None  # classifier=True refused a record without a usable classifier
    if args.output is not None:
        fmt = args.format or ("csv" if args.output.suffix.lower() == ".csv" else "jsonl")
        with closing_process_group():
            summary = predict_images(
                classifier.model, preset, images, args.output, categories=categories, topk=args.topk, format=fmt,
                resume=args.resume, overwrite=args.overwrite, from_file=from_file, batch_size=args.batch_size,
                workers=args.workers, device=device, progress=not args.quiet,
            )  # fmt: skip
        rest = f" in {summary.seconds:.1f} s, {summary.images_per_s:.1f} img/s, {summary.world_size} process(es)"
        return _finished(args, summary, f"{rest}: {summary.output}")
    session = Session(device, args.batch_size, args.workers)
    k = min(args.topk, len(categories))
    failed = 0
    with session.bar(len(images), "predict", not args.quiet) as bar:
        records = iter_predictions(classifier.model, preset, images, categories, session, topk=k, bar=bar)
        if args.json:  # one JSON object, written as the results come: {"arch": ..., "results": [...]}
            head = {"arch": classifier.arch, "weights": classifier.weights, "device": device, "topk": k}
            print(json.dumps(head)[:-1] + ', "results": [', flush=True)
            for n, record in enumerate(records):
                failed += "error" in record
                print(("" if n == 0 else ",\n") + json.dumps(record, allow_nan=False), end="", flush=True)
            print("\n]}")
        else:
            for record in records:
                if "error" in record:  # said on stderr already
                    failed += 1
                    continue
                print(record["image"])
                print_predictions(record["predictions"])
    return EXIT_FAILURE if failed else EXIT_OK


# --- evaluate --------------------------------------------------------------------------------------


def add_evaluate(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet evaluate`'s description and arguments.

    The arguments: DATA, the model and run options, --json, --plot.

    Args:
        p: the `evaluate` subcommand's parser, filled in place.
    """
    p.description = (
        "Score a model on DATA/<class>/<images> (class index: the weights' own class names when "
        "the folders are named after them, else the sorted folder order) or on ImageNet's validation layout "
        "(DATA/n01440764/..., synset folders mapped to the 1000 classes), with the weights' preprocessing. "
        "Prints acc@1, acc@5, the mean loss, images/s and per-class accuracy; --plot draws the confusion "
        "matrix. Unreadable images are reported and left out. Under torchrun each process scores its share "
        f"and the counts are summed. --weights is {SOURCE_RULES}."
    )
    p.add_argument("data", type=Path, metavar="DATA", help="DATA/<class>/<images>, or ImageNet's synset folders")
    _add_run_options(p, batch_size=32)
    p.add_argument("--json", action="store_true", help="print a JSON object (with the confusion matrix)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the confusion matrix as a PNG")


def run_evaluate(args: argparse.Namespace) -> int:
    """Score the model on a labelled folder and print acc@1, acc@5, the loss and per-class accuracy.

    Args:
        args: the parsed arguments of `vggnet evaluate` (see `add_evaluate`).

    Returns:
        0 (`EXIT_OK`); unreadable images are reported and left out of the counts. Under torchrun only rank 0 prints.

    Raises:
        UsageError: --plot does not name a .png file, or DATA is not a folder (exit 2).
    """
    from vggnet.batch.evaluate import evaluate, plot_confusion

    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot}: the confusion matrix is drawn as a PNG; name a .png file")
    if args.plot is not None:
        check_output(args.plot)  # before any weights are fetched
    if not args.data.is_dir():
        raise UsageError(f"{args.data}: no such folder; DATA holds one folder of images per class")
    device, loaded, preset = _model(args)
    with closing_process_group():
        result = evaluate(
            loaded.model, preset, args.data, classes=loaded.categories, batch_size=args.batch_size,
            workers=args.workers, device=device, progress=not args.quiet,
        )  # fmt: skip
    if rank() != 0:
        return EXIT_OK
    if args.plot is not None:
        plot_confusion(result, args.plot)
    if args.json:
        print_json({"arch": loaded.arch, "weights": loaded.weights, "data": str(args.data), **result.to_dict(True)})
    else:
        print(_evaluation_text(result, loaded, args.data))
    if args.plot is not None and not args.quiet:
        print(f"confusion matrix drawn to {args.plot}", file=sys.stderr)
    return EXIT_OK


_PER_CLASS_SHOWN = 20


def _evaluation_text(result: Evaluation, loaded: Loaded, data: Path) -> str:
    lines = [
        f"{loaded.arch} ({loaded.weights}) on {data}: {result.images} images, {len(result.per_class)} classes"
        + (f", {result.failed} unreadable (left out)" if result.failed else ""),
        f"acc@1  {result.acc1:.3%}",
        f"acc@5  {result.acc5:.3%}",
        f"loss   {result.loss:.4f}",
        f"speed  {result.images_per_s:.1f} img/s ({result.seconds:.1f} s, {result.world_size} process(es))",
    ]
    ranked = sorted(result.per_class.items(), key=lambda item: (item[1], item[0]))
    shown = ranked if len(ranked) <= _PER_CLASS_SHOWN else ranked[:10]
    title = "per class acc@1" if len(ranked) <= _PER_CLASS_SHOWN else f"the 10 weakest of {len(ranked)} classes (acc@1)"
    lines += ["", title] + [f"  {acc:7.2%}  {name}" for name, acc in shown]
    return "\n".join(lines)


# --- embed -----------------------------------------------------------------------------------------


def add_embed(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet embed`'s description and arguments.

    The arguments: the images, --layer, --out, --pool, --normalize, --shard-size, --resume, --overwrite and the model
    and run options.

    Args:
        p: the `embed` subcommand's parser, filled in place.
    """
    p.description = (
        "Run the model up to --layer for every image and write the features to --out DIR: "
        "features-NNNNNN.npy shards of float32 rows and index.jsonl, one line per image with its shard and "
        "row (or its error). --pool averages a feature map over its height and width, --normalize scales "
        "each row to unit L2 norm. --resume skips the images the index holds; under torchrun each process "
        f"embeds its share. Read it back with vggnet.batch.embed.read_embeddings(DIR). --weights is {SOURCE_RULES}."
    )
    _add_image_sources(p, "DATA")
    p.add_argument("--layer", default="fc7", metavar="NAME", help="the tap: fc7 (default), fc6, pool5, relu5_3, ...")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the shards and the index go")
    p.add_argument("--pool", action="store_true", help="global average pooling of a feature map (C, H, W) -> (C,)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each row")
    p.add_argument("--shard-size", type=positive, default=4096, metavar="N", help="rows per .npy file (default 4096)")
    p.add_argument("--resume", action="store_true", help="keep what --out holds; embed only the other images")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (else it is refused)")
    _add_run_options(p, batch_size=32)


def run_embed(args: argparse.Namespace) -> int:
    """Write the --layer features of every image to --out as .npy shards with an index.jsonl.

    Args:
        args: the parsed arguments of `vggnet embed` (see `add_embed`).

    Returns:
        0 (`EXIT_OK`) when every image was read; 1 (`EXIT_FAILURE`) when any could not be (its index line holds
            the error).

    Raises:
        UsageError: --layer is not a layer of the model; the message lists the valid names (exit 2).
    """
    from vggnet.batch.embed import check_folder, embed_images

    if rank() == 0:  # before any weights are fetched
        check_folder(args.out, resume=args.resume, overwrite=args.overwrite)
    images, from_file = _images(args)
    device, loaded, preset = _model(args, classifier=False)  # a features-only record serves here
    names = loaded.model.layer_names()
    if args.layer not in names:
        raise UsageError(f"--layer {args.layer}: no such layer in {loaded.arch}; valid: {', '.join(names)}")
    with closing_process_group():
        summary = embed_images(
            loaded.model, preset, images, args.out, layer=args.layer, pool=args.pool, normalize=args.normalize,
            shard_size=args.shard_size, resume=args.resume, overwrite=args.overwrite, from_file=from_file,
            batch_size=args.batch_size, workers=args.workers, device=device, progress=not args.quiet,
        )  # fmt: skip
    rest = f": {summary.layer} features of {summary.dim} values in {summary.seconds:.1f} s"
    return _finished(args, summary, f"{rest}, {summary.images_per_s:.1f} img/s: {summary.out}")
