"""The `vggnet` command line: argument parsing and printing only; the work is done by library functions.

How to add a command (issue 4 adds `finetune`, issue 6 adds `bench`):

1. Write two functions next to the others, in the same order as the table below:
   `_add_<name>(sub)` creates the parser with `sub.add_parser("<name>", help=..., parents=[_COMMON])`
   and declares its arguments; `_run_<name>(args) -> int` calls the library and prints the result.
   Import library modules at the top of this file (it imports torch anyway); keep an import inside a
   function only for an optional extra or a real start-up cost.
2. Add one line `"<name>": (_add_<name>, _run_<name>),` to `COMMANDS`.
3. Raise `UsageError` for a bad combination of arguments (exit 2). A `ValueError` from the library
   also exits 2 (unknown model or weight, bad size); `FileNotFoundError`, `OSError`, `RuntimeError`,
   `ChecksumError`, `DownloadError`, `BadCheckpointError` (an unsafe or unusable checkpoint) exit 1.
   `main()` prints one line on stderr, with a traceback only under `--debug`. Do not call `sys.exit`
   and do not catch these yourself.
4. Respect `args.quiet` (no progress bars, no chatter; pass `progress=not args.quiet`) and print
   results to stdout, everything else to stderr. Library code logs; only this module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .batch import FORMATS, Session
from .builders import list_models
from .checkpoint import (
    SOURCE_RULES,
    ArchMismatch,
    BadCheckpointError,
    Loaded,
    WeightsFileNotFound,
    available_devices,
    check_device,
    load,
)
from .config import MAX_SIZE, MIN_SIZE, check_arch
from .convert import convert
from .embed import embed_images
from .evaluate import Evaluation, evaluate, plot_confusion
from .explain import METHODS, explain
from .export import EXPORT_FORMATS, check_export, example_images, export, with_preset
from .feature_maps import feature_maps
from .finetune import AUGMENTS, HEADS, MODES, finetune
from .formats import WRITE_SUFFIXES, file_sha256
from .images import list_images
from .lpips import LPIPS
from .pictures import label, overlay
from .predict import iter_predictions, predict_images
from .summary import format_summary, plot_summary, summarize
from .transforms import ImageClassification, load_image, pil_to_tensor

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
    from .cache_admin import CachedFile
    from .weights import WeightsEnum

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
    if len(sides) != 2:
        raise argparse.ArgumentTypeError(
            f"expected N or HxW in pixels (e.g. 224 or 224x320), got {text!r}: {len(sides)} parts"
        )
    if min(sides) < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r}: VGG needs at least {MIN_SIZE} px per side (five 2x2 max-pools); give N or HxW, N >= {MIN_SIZE}"
        )
    return sides[0], sides[1]


def _side_arg(text: str) -> int:
    """argparse type for one side in pixels: VGG's five 2x2 max-pools need at least MIN_SIZE; at most MAX_SIZE."""
    value = _positive(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"VGG needs at least {MIN_SIZE} px (five 2x2 max-pools), got {text!r}")
    _most(text, value)
    return value


def _most(text: str, side: int) -> None:
    if side > MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SIZE} px per side (vgg16 keeps 1.2 GiB of activations per image at {MAX_SIZE}), got {text!r}"
        )


def _bounded_size_arg(text: str) -> tuple[int, int]:
    """`_size_arg` for sizes that are run, not just computed on the meta device: each side at most MAX_SIZE."""
    sides = _size_arg(text)
    _most(text, max(sides))
    return sides


def _device_arg(text: str) -> str:
    """argparse type for a torch device that exists here (not "meta"), listing the valid ones when not."""
    try:
        device = check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if device is not None and device.type == "meta":
        valid = ", ".join(available_devices())
        raise argparse.ArgumentTypeError(f"the meta device holds no values to run a model with; valid: {valid}")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# --weights of predict and finetune: the one set of rules checkpoint.load follows
_WEIGHTS_HELP = f"{SOURCE_RULES} (default DEFAULT)"


def _model_arg(text: str) -> str:
    """argparse type for a builder name, case-insensitive, listing the valid ones when unknown."""
    try:
        return check_arch(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# summary ---------------------------------------------------------------------------------------------


def _add_summary(sub: SubParsers) -> None:
    p = sub.add_parser(
        "summary",
        parents=[_COMMON],
        help="per-layer shapes, parameters, MACs and memory of a model (instant, offline)",
        description="One row per layer (the paper's names: conv1_1 ... pool5, avgpool, fc6 ... fc8) with its "
        "output shape, receptive field (side, jump and start in input pixels), parameters, multiply-adds and "
        "activation memory, then the totals. Computed on the "
        "meta device: no weights, no memory, any input size.",
    )
    p.add_argument("arch", type=_model_arg, metavar="MODEL", help=f"one of {', '.join(list_models())}")
    p.add_argument("--input-size", type=_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B", help="for the activation memory")
    p.add_argument("--num-classes", type=_positive, default=1000, metavar="K", help="width of fc8 (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw parameters, MACs and receptive field per layer (.svg; .png with matplotlib)",
    )


def _run_summary(args: argparse.Namespace) -> int:
    summary = summarize(args.arch, args.input_size, batch_size=args.batch_size, num_classes=args.num_classes)
    if args.plot is not None:
        plot_summary(summary, args.plot)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    if args.plot is not None and not args.quiet:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK


# predict ---------------------------------------------------------------------------------------------


def _add_predict(sub: SubParsers) -> None:
    p = sub.add_parser(
        "predict",
        parents=[_COMMON],
        help="classify images: top-k labels with probabilities (files, folders, globs, lists; streamed)",
        description="Classify images with a model and its weights: the weights' preprocessing, then the top-k "
        "labels with their probabilities. IMAGE is a file, a folder (its images at any depth), a glob pattern "
        "or - (paths one per line on stdin); --from-file reads paths from a list. Images are decoded in "
        "--workers processes while the model runs. Without --output the results go to stdout; with "
        "--output FILE one line per image is written as it comes (JSON Lines, or CSV), --resume skips the "
        "images FILE holds, and under torchrun each process does its share. An unreadable image is "
        'reported (in FILE with an "error", and on stderr) and the run goes on; the exit status is then 1. '
        f"--weights is {SOURCE_RULES}. The model is the one the weights name (a fine-tuned checkpoint's, a "
        "state dict's keys), else --arch (default vgg16); a plain file's labels are ImageNet's when it has "
        "1000 outputs.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders, glob patterns, or - for stdin")
    p.add_argument("--from-file", type=Path, metavar="LIST", help="a text file of image paths, one per line")
    _add_model_args(p)
    p.add_argument("--topk", type=_positive, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON object (without --output)")
    p.add_argument("--output", "-o", type=Path, metavar="FILE", help="write one line per image to FILE as it comes")
    p.add_argument("--format", choices=FORMATS, help="of --output (default: csv for a .csv FILE, else jsonl)")
    p.add_argument("--resume", action="store_true", help="keep what --output holds; classify only the others")


def _add_model_args(p: argparse.ArgumentParser, batch_size: int = 16) -> None:
    """--arch, --weights, --sha256, --device, --batch-size, --workers, --image-size: predict, evaluate, embed."""
    p.add_argument("--arch", type=_model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--batch-size", type=_positive, default=batch_size, metavar="B", help=f"default {batch_size}")
    workers = "processes decoding images (default: the cores the model leaves, up to 8)"
    p.add_argument("--workers", type=_count, metavar="W", help=workers)
    p.add_argument(
        "--image-size", type=_side_arg, metavar="N", help="crop size (default: the weights', 224); resize to N*256/224"
    )


def _count(text: str) -> int:
    """argparse type for a count that may be 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def _world() -> int:
    """How many processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _run_device(args: argparse.Namespace) -> str:
    """--device, else cuda (this process's GPU under torchrun) when available, else cpu."""
    if args.device is not None:
        return str(args.device)
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if _world() > 1 and "LOCAL_RANK" in os.environ else "cuda"


def _end_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _images(args: argparse.Namespace) -> list[str] | None:
    """The images named, listed here before any weights are fetched; None under torchrun (rank 0 lists)."""
    if not args.images and args.from_file is None:
        raise UsageError("name the images: IMAGE ... (files, folders, globs), --from-file LIST, or - for stdin")
    return list_images(args.images, from_file=args.from_file) if _world() <= 1 else None


def _classifier(args: argparse.Namespace, device: str, classifier: bool = True) -> Loaded:
    """The model, preset and labels --weights names (checkpoint.load's rules); --arch defaults to the source's own."""
    try:
        return load(
            args.weights, arch=args.arch, device=device, progress=not args.quiet, sha256=args.sha256,
            classifier=classifier,
        )  # fmt: skip
    except ArchMismatch as err:
        raise UsageError(err.explain("--arch ")) from err


def _run_predict(args: argparse.Namespace) -> int:
    if args.output is None and (args.resume or args.format is not None):
        raise UsageError("--resume and --format are for --output FILE")
    if args.output is not None and args.json:
        raise UsageError("--json prints to stdout; with --output FILE choose --format jsonl or csv")
    if args.output is None and _world() > 1:
        raise UsageError("under torchrun, give --output FILE: each process writes its part and rank 0 merges them")
    paths = _images(args)
    device = _run_device(args)
    classifier = _classifier(args, device)
    preset = classifier.preset if args.image_size is None else classifier.preset.resized(args.image_size)
    categories = classifier.categories
    assert categories is not None  # classifier=True refused a record without a usable classifier
    if args.output is not None:
        fmt = args.format or ("csv" if args.output.suffix.lower() == ".csv" else "jsonl")
        try:
            summary = predict_images(
                classifier.model, preset, paths if paths is not None else args.images, args.output,
                categories=categories, topk=args.topk, format=fmt, resume=args.resume,
                from_file=None if paths is not None else args.from_file, batch_size=args.batch_size,
                workers=args.workers, device=device, progress=not args.quiet,
            )  # fmt: skip
        finally:
            _end_distributed()
        if _rank() == 0 and not args.quiet:
            skipped = f", {summary.skipped} already there" if args.resume else ""
            print(
                f"{summary.images} images ({summary.failed} unreadable{skipped}) in {summary.seconds:.1f} s, "
                f"{summary.images_per_s:.1f} img/s, {summary.world_size} process(es): {summary.output}",
                file=sys.stderr,
            )
        return _run_status(summary.failed)
    assert paths is not None
    session = Session(device, args.batch_size, args.workers)
    k = min(args.topk, len(categories))
    failed = 0
    with session.bar(len(paths), "predict", not args.quiet) as bar:
        records = iter_predictions(classifier.model, preset, paths, categories, session, topk=k, bar=bar)
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
                for pred in record["predictions"]:
                    print(f"  {pred['probability']:7.2%}  {pred['label']} ({pred['index']})")
    return EXIT_FAILURE if failed else EXIT_OK


# evaluate --------------------------------------------------------------------------------------------


def _add_evaluate(sub: SubParsers) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[_COMMON],
        help="accuracy on a labelled folder: acc@1, acc@5, per class, loss, confusion matrix",
        description="Score a model on DATA/<class>/<images> (class index: the weights' own class names when "
        "the folders are named after them, else the sorted folder order) or on ImageNet's validation layout "
        "(DATA/n01440764/..., synset folders mapped to the 1000 classes), with the weights' preprocessing. "
        "Prints acc@1, acc@5, the mean loss, images/s and per-class accuracy; --plot draws the confusion "
        "matrix. Unreadable images are reported and left out. Under torchrun each process scores its share "
        f"and the counts are summed. --weights is {SOURCE_RULES}.",
    )
    p.add_argument("data", type=Path, metavar="DATA", help="DATA/<class>/<images>, or ImageNet's synset folders")
    _add_model_args(p, batch_size=32)
    p.add_argument("--json", action="store_true", help="print a JSON object (with the confusion matrix)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the confusion matrix as a PNG")


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot}: the confusion matrix is drawn as a PNG; name a .png file")
    if not args.data.is_dir():
        raise UsageError(f"{args.data}: no such folder; DATA holds one folder of images per class")
    device = _run_device(args)
    loaded = _classifier(args, device)
    preset = loaded.preset if args.image_size is None else loaded.preset.resized(args.image_size)
    try:
        result = evaluate(
            loaded.model, preset, args.data, classes=loaded.categories, batch_size=args.batch_size,
            workers=args.workers, device=device, progress=not args.quiet,
        )  # fmt: skip
    finally:
        _end_distributed()
    if _rank() != 0:
        return EXIT_OK
    if args.plot is not None:
        plot_confusion(result, args.plot)
    if args.json:
        _print_json({"arch": loaded.arch, "weights": loaded.weights, "data": str(args.data), **result.to_dict(True)})
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


# embed -----------------------------------------------------------------------------------------------


def _add_embed(sub: SubParsers) -> None:
    p = sub.add_parser(
        "embed",
        parents=[_COMMON],
        help="features of a named layer (fc7, pool5, ...) for every image, in .npy shards with an index",
        description="Run the model up to --layer for every image and write the features to --out DIR: "
        "features-NNNNNN.npy shards of float32 rows and index.jsonl, one line per image with its shard and "
        "row (or its error). --pool averages a feature map over its height and width, --normalize scales "
        "each row to unit L2 norm. --resume skips the images the index holds; under torchrun each process "
        f"embeds its share. Read it back with vggnet.embed.read_embeddings(DIR). --weights is {SOURCE_RULES}.",
    )
    p.add_argument("images", nargs="*", metavar="DATA", help="image files, folders, glob patterns, or - for stdin")
    p.add_argument("--from-file", type=Path, metavar="LIST", help="a text file of image paths, one per line")
    p.add_argument("--layer", default="fc7", metavar="NAME", help="the tap: fc7 (default), fc6, pool5, relu5_3, ...")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the shards and the index go")
    p.add_argument("--pool", action="store_true", help="global average pooling of a feature map (C, H, W) -> (C,)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each row")
    p.add_argument("--shard-size", type=_positive, default=4096, metavar="N", help="rows per .npy file (default 4096)")
    p.add_argument("--resume", action="store_true", help="keep what --out holds; embed only the other images")
    _add_model_args(p, batch_size=32)


def _run_embed(args: argparse.Namespace) -> int:
    paths = _images(args)
    device = _run_device(args)
    loaded = _classifier(args, device, classifier=False)  # a features-only record serves here
    names = loaded.model.layer_names()
    if args.layer not in names:
        raise UsageError(f"--layer {args.layer}: no such layer in {loaded.arch}; valid: {', '.join(names)}")
    preset = loaded.preset if args.image_size is None else loaded.preset.resized(args.image_size)
    try:
        summary = embed_images(
            loaded.model, preset, paths if paths is not None else args.images, args.out, layer=args.layer,
            pool=args.pool, normalize=args.normalize, shard_size=args.shard_size, resume=args.resume,
            from_file=None if paths is not None else args.from_file, batch_size=args.batch_size,
            workers=args.workers, device=device, progress=not args.quiet,
        )  # fmt: skip
    finally:
        _end_distributed()
    if _rank() == 0 and not args.quiet:
        skipped = f", {summary.skipped} already there" if args.resume else ""
        print(
            f"{summary.images} images ({summary.failed} unreadable{skipped}): {summary.layer} features of "
            f"{summary.dim} values in {summary.seconds:.1f} s, {summary.images_per_s:.1f} img/s: {summary.out}",
            file=sys.stderr,
        )
    return _run_status(summary.failed)


def _run_status(failed: int) -> int:
    """The exit status of a streamed run: 1 when an image failed, said by rank 0 alone (another rank failing
    first would make torchrun stop rank 0 mid-sentence)."""
    return EXIT_FAILURE if failed and _rank() == 0 else EXIT_OK


# shared by list, download, verify and cache ---------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns listed in `right` right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _weights_enums() -> Mapping[str, type[WeightsEnum]]:
    """builder name -> its weights enum (read at call time, so tests can stand in their own records)."""
    from . import weights

    return weights.WEIGHTS_ENUMS


def _all_weights() -> list[WeightsEnum]:
    """Every distinct record (aliases such as DEFAULT skipped), in the order of the builders."""
    from . import weights

    return [member for enum in weights.WEIGHTS_ENUMS.values() for member in enum]


def _select_weights(names: Sequence[str]) -> list[WeightsEnum]:
    """Records named by builder ("vgg16": its DEFAULT) or in full ("VGG16_Weights.IMAGENET1K_FEATURES")."""
    from . import weights

    enums = weights.WEIGHTS_ENUMS
    by_class = {enum.__name__.lower(): enum for enum in enums.values()}
    chosen: list[WeightsEnum] = []
    for name in names:
        enum_name, _, member = name.partition(".")
        enum = enums.get(name.lower()) or by_class.get(enum_name.lower())
        if enum is None or (member == "" and name.lower() not in enums):
            valid = [*enums, *(str(m) for m in _all_weights())]
            raise ValueError(f"unknown model or weights {name!r}; valid: {', '.join(valid)}")
        found = enum.from_name(member) if member else enum.DEFAULT  # type: ignore[attr-defined]
        if found not in chosen:
            chosen.append(found)
    return chosen


# list ------------------------------------------------------------------------------------------------


def _add_list(sub: SubParsers) -> None:
    p = sub.add_parser(
        "list",
        parents=[_COMMON],
        help="every model and its weights: accuracy, size, cost, and whether they are cached",
        description="Every model and every checkpoint record (VGG16_Weights.IMAGENET1K_FEATURES included) with "
        "ImageNet acc@1/acc@5, parameters, GFLOPS (multiply-adds at 224x224), file size, and whether the file "
        "is already in the cache.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")


def _run_list(args: argparse.Namespace) -> int:
    from . import weights
    from .cache import cache_dir

    where = cache_dir()
    entries = []
    for arch, enum in weights.WEIGHTS_ENUMS.items():
        for member in enum:
            record = member.value
            entries.append(
                {
                    "model": arch,
                    "weights": str(member),
                    "default": enum.DEFAULT is member,  # type: ignore[attr-defined]
                    "acc@1": record.metrics.get("acc@1"),
                    "acc@5": record.metrics.get("acc@5"),
                    "params": record.num_params,
                    "gflops": record.gflops,
                    "file_mib": record.file_size,
                    "file": record.file_name,
                    "cached": (where / record.file_name).is_file(),
                }
            )
    if args.json:
        for entry in entries:  # JSON has no NaN: the features-only checkpoint has no accuracy
            for key in ("acc@1", "acc@5"):
                value = entry[key]
                entry[key] = None if isinstance(value, float) and math.isnan(value) else value
        _print_json(entries)
        return EXIT_OK

    def number(value: Any, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    rows = [
        (
            str(e["model"]),
            str(e["weights"]) + (" (default)" if e["default"] else ""),
            number(e["acc@1"], ".3f"),
            number(e["acc@5"], ".3f"),
            number(e["params"], ","),
            number(e["gflops"], ".3f"),
            number(e["file_mib"], ".1f"),
            "yes" if e["cached"] else "no",
        )
        for e in entries
    ]
    header = ("model", "weights", "acc@1", "acc@5", "params", "GFLOPS", "MiB", "cached")
    print(_table(header, rows, right=(2, 3, 4, 5, 6)))
    print(f"\ncache: {where}  (VGGNET_HOME moves it; 'vggnet verify' re-hashes what is there)")
    return EXIT_OK


# download --------------------------------------------------------------------------------------------


def _add_download(sub: SubParsers) -> None:
    p = sub.add_parser(
        "download",
        parents=[_COMMON],
        help="prefetch checkpoints into the cache, or build a mirror directory",
        description="Fetch and verify checkpoints: into the cache (so later loads need no network), or with "
        "--to into a directory that VGGNET_MIRROR can point at (as a path, or served over HTTP). A model name "
        "means its DEFAULT weights. VGGNET_MIRROR, if set, is where files are fetched from.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="a model (vgg16) or weights (VGG16_Weights.IMAGENET1K_V1)")
    p.add_argument("--all", action="store_true", help="every checkpoint record (9 files, about 4.6 GiB)")
    p.add_argument("--to", type=Path, metavar="DIR", help="build a mirror in DIR instead of filling the cache")


def _run_download(args: argparse.Namespace) -> int:
    from .hub import add_to_mirror, fetch

    if not args.names and not args.all:
        raise UsageError("name the models or weights to download, or pass --all")
    chosen = _all_weights() if args.all else _select_weights(args.names)
    failed = 0
    for member in chosen:
        record = member.value
        try:
            if args.to is None:
                path = fetch(record.url, sha256=record.sha256, size=record.size, progress=not args.quiet)
            else:
                path = add_to_mirror(
                    record.url, args.to, sha256=record.sha256, size=record.size, progress=not args.quiet
                )
        except (OSError, ValueError, RuntimeError) as err:  # ChecksumError and DownloadError included
            failed += 1
            _error(f"{member}: {err}")
            continue
        print(f"{member}  {_mib(path.stat().st_size)}  {path}")
    if failed:
        _error(f"{failed} of {len(chosen)} downloads failed")
        return EXIT_FAILURE
    return EXIT_OK


def _records_by_file() -> dict[str, WeightsEnum]:
    return {member.value.file_name: member for member in _all_weights()}


def _expected_digest(entry: CachedFile, records: dict[str, WeightsEnum]) -> tuple[str, str] | None:
    """(digest or prefix, where it comes from) for a file that can be checked, else None."""
    member = records.get(entry.path.name)
    if member is not None:
        return member.value.sha256, str(member)
    if entry.sha256 is not None and entry.checked:  # a stamp's digest proves nothing unless it was checked
        return entry.sha256, "the digest recorded when it was verified"
    if entry.name_digest is not None:
        return entry.name_digest, _IN_NAME
    return None


_IN_NAME = "the digest in its name"


# verify ----------------------------------------------------------------------------------------------


def _add_verify(sub: SubParsers) -> None:
    p = sub.add_parser(
        "verify",
        parents=[_COMMON],
        help="re-hash every cached checkpoint: ok, corrupt or unknown (exit 1 if any is corrupt)",
        description="Hash every checkpoint in the cache (or in DIR, e.g. a mirror built by 'download --to') and "
        "compare it with its record, with the digest recorded when it was downloaded and checked, or with the "
        "digest in its name. 'unknown' means there is nothing to compare with. Exits 1 if any file is corrupt.",
    )
    p.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="default: the cache directory")
    p.add_argument("--json", action="store_true", help="print a JSON list")


def _run_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .cache import ChecksumError, cache_dir, verify_file
    from .cache_admin import cached_files

    folder = args.folder if args.folder is not None else cache_dir()
    if args.folder is not None and not folder.is_dir():
        raise UsageError(f"{folder} is not a directory; give a cache or mirror directory, or none for the cache")
    records = _records_by_file()
    entries = [e for e in cached_files(folder) if e.kind in ("checkpoint", "zip copy")]
    results: list[dict[str, Any]] = []
    with tqdm(
        total=sum(e.size for e in entries), unit="B", unit_scale=True, unit_divisor=1024, desc="hashing",
        file=sys.stderr, disable=True if args.quiet else None, leave=False,
    ) as bar:  # fmt: skip
        for entry in entries:
            expected = _expected_digest(entry, records)
            try:
                digest = verify_file(entry.path, None if expected is None else expected[0], progress=bar.update)
                status = "unknown" if expected is None else "ok"
            except ChecksumError as err:
                digest, status = err.actual, "corrupt"
            results.append(
                {
                    "file": entry.path.name,
                    "status": status,
                    "size": entry.size,
                    "sha256": digest,
                    "expected": None if expected is None else expected[0],
                    "against": None if expected is None else expected[1],
                }
            )
    corrupt = [r for r in results if r["status"] == "corrupt"]
    if args.json:
        _print_json(results)
    elif not results:
        print(f"no checkpoints in {folder}")
    else:
        rows = [(r["status"], r["file"], _mib(r["size"]), r["against"] or "-") for r in results]
        print(_table(("status", "file", "size", "checked against"), rows, right=(2,)))
        unknown = sum(r["status"] == "unknown" for r in results)
        print(f"\n{folder}: {len(results) - unknown - len(corrupt)} ok, {len(corrupt)} corrupt, {unknown} unknown")
    fix = "remove it with 'vggnet cache --remove {}'" if args.folder is None else "replace it with a good copy"
    for r in corrupt:
        if r["against"] == _IN_NAME:
            _error(
                f"{r['file']} is corrupt or misnamed: SHA-256 {r['sha256']} does not start with {r['expected']}, "
                "the hex part of its name, which is the only reference (torch.hub's name-<sha256 prefix>.pth "
                "convention); if the name only looks like one (a date, an epoch), the file may be fine: "
                f"rename it; otherwise {fix.format(r['file'])} and download it again"
            )
            continue
        _error(
            f"{r['file']} is corrupt: SHA-256 {r['sha256']} does not match {r['expected']}; "
            f"{fix.format(r['file'])} and download it again"
        )
    return EXIT_FAILURE if corrupt else EXIT_OK


# cache -----------------------------------------------------------------------------------------------


def _add_cache(sub: SubParsers) -> None:
    p = sub.add_parser(
        "cache",
        parents=[_COMMON],
        help="what is cached and how big it is; remove files",
        description="List the files in the cache directory ($VGGNET_HOME, else torch.hub's checkpoint "
        "directory, shared with torchvision) with their sizes, or remove some. Removing a checkpoint also "
        "removes its stamp, its zip copy, partial downloads and copies moved aside as corrupt. Partial files "
        "and locks a running download holds are kept and reported.",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--remove", nargs="+", metavar="NAME", help="a listed file name, a model (vgg16) or weights name"
    )
    group.add_argument(
        "--clear",
        action="store_true",
        help="remove what vggnet verified or wrote: files with a vggnet stamp, zip copies, partial downloads, "
        "corrupt copies (other files are kept)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_cache(args: argparse.Namespace) -> int:
    from .cache import cache_dir
    from .cache_admin import cached_files, remove_cached

    folder = cache_dir()
    entries = cached_files(folder)
    records = _records_by_file()
    if args.remove or args.clear:
        if args.clear:  # only what vggnet can show it verified or wrote: the cache may be torchvision's too
            names = {e.path.name for e in entries if e.ours}
        else:
            names = {_cached_name(name, entries) for name in args.remove}
        result = remove_cached(*names, folder=folder, local_stamps=args.clear)
        if args.json:
            removed = [{"file": e.path.name, "kind": e.kind, "size": e.size} for e in result.files]
            skipped = [p.name for p in result.skipped]
            _print_json({"folder": str(folder), "removed": removed, "freed": result.freed, "skipped": skipped})
        else:
            if not args.quiet:
                for entry in result.files:
                    print(f"removed {entry.path.name} ({_mib(entry.size)})")
            print(f"freed {_mib(result.freed)} in {folder}")
        for path in result.skipped:
            print(f"{PROG}: kept {path.name}: another process is using it (a download in progress)", file=sys.stderr)
        return EXIT_OK
    listing: list[dict[str, Any]] = [
        {
            "file": e.path.name,
            "size": e.size,
            "kind": e.kind,
            "weights": str(records[e.base]) if e.base in records else None,
        }
        for e in entries
    ]
    if args.json:
        _print_json({"folder": str(folder), "files": listing, "total": sum(e.size for e in entries)})
        return EXIT_OK
    if not entries:
        print(f"the cache is empty: {folder}")
        return EXIT_OK
    rows = [(f["file"], _mib(f["size"]), f["weights"] or "-", f["kind"]) for f in listing]
    print(_table(("file", "size", "weights", "kind"), rows, right=(1,)))
    print(f"\n{len(entries)} files, {_mib(sum(e.size for e in entries))} in {folder}")
    return EXIT_OK


def _cached_name(name: str, entries: Sequence[CachedFile]) -> str:
    """What a --remove argument means: a listed file name, a checkpoint's name, or a model or weights name."""
    names = {e.path.name for e in entries} | {e.base for e in entries}
    if name in names:
        return name
    try:
        (member,) = _select_weights([name])
    except ValueError:
        member = None
    if member is not None and member.value.file_name in names:
        return member.value.file_name
    what = f"{member} ({member.value.file_name}) is" if member is not None else f"{name!r} is"
    cached = ", ".join(sorted(e.path.name for e in entries)) or "nothing"
    raise ValueError(f"{what} not in the cache; cached: {cached}")


# bench -----------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float16", "int8")


def _add_bench(sub: SubParsers) -> None:
    p = sub.add_parser(
        "bench",
        parents=[_COMMON],
        help="img/s and latency: vggnet eager vs optimize_for_inference vs torchvision, in one run",
        description="Times vggnet eager, vggnet optimize_for_inference and, when installed, torchvision on "
        "the same random input and weights, in interleaved rounds (median), and the share of the device's "
        "matmul peak (measured in the same run) each reaches. Random weights: nothing is downloaded.",
    )
    p.add_argument("--arch", type=_model_arg, default="vgg16", metavar="MODEL", help="default vgg16")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B", help="default 1")
    p.add_argument("--image-size", type=_bounded_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
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
    p.add_argument("--iters", type=_positive, default=20, metavar="N", help="timed calls per candidate (default 20)")
    p.add_argument("--rounds", type=_positive, default=5, metavar="R", help="interleaved rounds (default 5)")
    p.add_argument("--no-torchvision", action="store_true", help="skip the torchvision figures")
    p.add_argument("--json", action="store_true", help="print the report as a JSON object")


def _run_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import format_report, run_bench

    report = run_bench(
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
        _print_json(report.to_dict())
    else:
        print(format_report(report))
    return EXIT_OK


# finetune --------------------------------------------------------------------------------------------


def _add_finetune(sub: SubParsers) -> None:
    p = sub.add_parser(
        "finetune",
        parents=[_COMMON],
        help="fine-tune a model on your own images (DATA/train/<class>/, DATA/val/<class>/)",
        description="Fine-tune on an ImageFolder layout: DATA/train/<class>/*.jpg|png and DATA/val/<class>/. "
        "--mode linear freezes the backbone, computes the fc7 features once and trains fc8 on them; --mode full "
        "trains every layer with augmentation. Writes OUT/best.pth (the best validation accuracy), which "
        "`vggnet predict --weights OUT/best.pth` and vggnet.finetune.load_finetuned read back. Under torchrun "
        "it runs data-parallel (DDP), --batch-size per process.",
    )
    p.add_argument("data", type=Path, metavar="DATA", help="folder holding train/ and val/")
    p.add_argument("--arch", type=_model_arg, default="vgg16", metavar="MODEL", help="default vgg16")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--epochs", type=_positive, default=10, metavar="N", help="default 10")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="B", help="per process (default 32)")
    p.add_argument("--lr", type=float, metavar="LR", help="default 0.05 (linear), 0.001 (full)")
    p.add_argument("--mode", choices=MODES, default="linear", help="default linear")
    p.add_argument(
        "--head", choices=HEADS, default="vgg",
        help="vgg: fc6-fc8 (default); gap: global average pool + one Linear on the 512 channels (small data, "
        "small images); fc7: a linear probe on fc7 features (= --mode linear with the vgg head)",
    )  # fmt: skip
    p.add_argument("--image-size", type=_side_arg, default=224, metavar="N", help="crop size (default 224)")
    p.add_argument("--out", type=Path, default=Path("finetune-out"), metavar="DIR", help="default ./finetune-out")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, metavar="W", help="data loading processes (default 0)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on for CUDA)")
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
        "--early-stop", type=_positive, metavar="PATIENCE", help="stop after this many epochs without a better val acc"
    )
    recipe.add_argument(
        "--val-split", type=float, metavar="SHARE", help="without DATA/val: hold out this share of each class (0.2)"
    )
    runs = p.add_argument_group("runs")
    runs.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/last.pth")
    runs.add_argument("--overwrite", action="store_true", help="replace the run OUT already holds")
    runs.add_argument("--plot", type=Path, metavar="PNG", help="draw the loss and accuracy curves into PNG")


def _run_finetune(args: argparse.Namespace) -> int:
    if not args.quiet:  # the per-epoch figures are logged at INFO
        logging.getLogger("vggnet.finetune").setLevel(logging.INFO)
    recipe = {name: getattr(args, name) for name in FINETUNE_OPTIONS}
    if args.crop_scale is not None:
        recipe["crop_scale"] = tuple(args.crop_scale)
    try:
        result = finetune(args.data, progress=not args.quiet, **recipe)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.rank == 0:  # the per-epoch figures went to stderr as they came
        stopped = " (stopped early)" if result.stopped_early else ""
        print(
            f"best val accuracy {result.best_val_acc:.2f}% at epoch {result.best_epoch}{stopped}: {result.checkpoint}"
        )
    return EXIT_OK


# FinetuneConfig's fields that are `vggnet finetune` options of the same name (a test keeps them in step;
# `data` is the positional DATA, `progress` is the global --quiet, `on_epoch` is Python's: the CLI prints)
FINETUNE_OPTIONS = (
    "arch", "weights", "epochs", "batch_size", "lr", "mode", "head", "image_size", "out", "device", "workers", "amp",
    "in_chans", "seed", "augment", "hflip", "crop_scale", "label_smoothing", "weight_decay", "warmup_epochs",
    "early_stop", "val_split", "resume", "overwrite", "plot",
)  # fmt: skip


# lpips, explain, features: seeing with VGG (issue 15) -------------------------------------------------


def _add_lpips(sub: SubParsers) -> None:
    p = sub.add_parser(
        "lpips",
        parents=[_COMMON],
        help="the LPIPS perceptual distance between two images",
        description="LPIPS (Zhang et al. 2018) between two images of the same size (or both resized with --size): "
        "VGG16's five relu taps, unit-normalised, weighted by the LPIPS project's published linear layers "
        "(fetched once from a pinned URL, SHA-256 checked). 0 for identical images; about 0.1-0.7 for "
        "perceptibly different ones.",
    )
    p.add_argument("image1", metavar="IMG1")
    p.add_argument("image2", metavar="IMG2")
    p.add_argument("--arch", type=_model_arg, default="vgg16", metavar="MODEL", help="the trunk (default vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=f"the trunk's: {_WEIGHTS_HELP}")
    p.add_argument("--version", choices=("0.1", "0.0"), default="0.1", help="the linear layers (default 0.1)")
    p.add_argument("--lin-weights", type=Path, metavar="FILE", help="a local copy of LPIPS' vgg.pth instead")
    p.add_argument("--size", type=_size_arg, metavar="N|HxW", help="resize both images to this size first")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_lpips(args: argparse.Namespace) -> int:
    images = [load_image(path) for path in (args.image1, args.image2)]
    if args.size is not None:
        images = [img.resize((args.size[1], args.size[0]), _bilinear()) for img in images]
    sizes = [f"{img.width}x{img.height}" for img in images]
    if sizes[0] != sizes[1]:
        raise UsageError(
            f"{args.image1} is {sizes[0]} and {args.image2} is {sizes[1]} (width x height); "
            "pass --size N or --size HxW to resize both"
        )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    trunk = _vision_model(args, device, classifier=False)
    metric = LPIPS(
        trunk.model, version=args.version, input_range="0-1", lin_weights=args.lin_weights, progress=not args.quiet
    ).to(device)
    x, y = (pil_to_tensor(img).float().div(255).unsqueeze(0).to(device) for img in images)
    with torch.no_grad():
        distance = float(metric(x, y)[0])
    if args.json:
        _print_json(
            {
                "image1": args.image1,
                "image2": args.image2,
                "lpips": distance,
                "version": args.version,
                "arch": trunk.arch,
                "weights": trunk.weights,
                "size": [images[0].height, images[0].width],
            }
        )
    else:
        print(f"{distance:.4f}")
    return EXIT_OK


def _add_explain(sub: SubParsers) -> None:
    p = sub.add_parser(
        "explain",
        parents=[_COMMON],
        help="where the model looked: a class-activation map over the image (needs vggnet[explain])",
        description="Grad-CAM (computed by Captum's LayerGradCam: pip install 'vggnet[explain]') of the top "
        "class, or of --class K, at a layer (default: the last convolution, conv5_3 in vgg16), drawn in jet "
        "colours over the image as the model saw it (the weights' resize and crop) and written as a PNG; the "
        "top classes are printed.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--arch", type=_model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")
    p.add_argument("--layer", metavar="NAME", help="conv1_1 ... pool5 (default: the last convolution)")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="default gradcam")
    p.add_argument("--class", dest="target", type=int, metavar="K", help="explain class K (default: the top class)")
    p.add_argument("--topk", type=_positive, default=5, metavar="K", help="classes to list (default 5)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map over the photo (default 0.5)")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="where to write the picture")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_explain(args: argparse.Namespace) -> int:
    _check_png(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = _vision_model(args, device, classifier=True)
    x = loaded.preset(load_image(args.image)).to(device)
    result = explain(
        loaded.model,
        x,
        layer=args.layer,
        target=args.target,
        topk=args.topk,
        method=args.method,
        categories=loaded.categories,
    )
    explained, top = result.explained[0], result.top[0]
    picture = overlay(_photo(x, loaded.preset), result.heatmap[0], alpha=args.alpha)
    label(picture, f"{explained.name} {explained.probability:.1%} ({result.layer})")
    picture.save(args.out)
    predictions = [{"index": p.index, "label": p.name, "probability": p.probability} for p in top]
    if args.json:
        _print_json(
            {
                "image": args.image,
                "arch": loaded.arch,
                "weights": loaded.weights,
                "layer": result.layer,
                "method": result.method,
                "class": {"index": explained.index, "label": explained.name, "probability": explained.probability},
                "predictions": predictions,
                "out": str(args.out),
            }
        )
    else:
        print(f"{args.image}: {result.method} of {explained.name} ({explained.index}) at {result.layer}")
        for pred in predictions:
            print(f"  {pred['probability']:7.2%}  {pred['label']} ({pred['index']})")
    if not args.quiet:
        print(f"map written to {args.out}", file=sys.stderr)
    return EXIT_OK


def _add_features(sub: SubParsers) -> None:
    p = sub.add_parser(
        "features",
        parents=[_COMMON],
        help="a grid of a layer's strongest feature maps for an image",
        description="The channels of a layer with the largest mean activation for an image (after the weights' "
        "resize and crop), each drawn in jet colours from its own minimum to its maximum, labelled with its "
        "channel number, written as a PNG grid.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--arch", type=_model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")
    p.add_argument("--layer", metavar="NAME", help="conv1_1 ... pool5 (default: block 3's last conv, conv3_3 in vgg16)")
    p.add_argument("--count", type=_positive, default=16, metavar="N", help="maps to show (default 16)")
    p.add_argument("--tile", type=_positive, default=96, metavar="PX", help="tile side in pixels (default 96)")
    p.add_argument("--columns", type=_positive, metavar="C", help="tiles per row (default: a near-square grid)")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="where to write the grid")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_features(args: argparse.Namespace) -> int:
    _check_png(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = _vision_model(args, device, classifier=False)
    maps = feature_maps(loaded.model, loaded.preset(load_image(args.image)).to(device), args.layer, args.count)
    maps.grid(tile=args.tile, columns=args.columns).save(args.out)
    if args.json:
        _print_json(
            {
                "image": args.image,
                "arch": loaded.arch,
                "weights": loaded.weights,
                "layer": maps.layer,
                "map_size": list(maps.maps.shape[1:]),
                "channels": maps.channels,
                "means": maps.means,
                "out": str(args.out),
            }
        )
    else:
        h, w = maps.maps.shape[1:]
        print(f"{args.image}: the {len(maps.channels)} strongest of {maps.layer}'s maps ({h}x{w})")
        print(_table(("channel", "mean"), [(str(c), f"{m:.4f}") for c, m in zip(maps.channels, maps.means)], (0, 1)))
    if not args.quiet:
        print(f"grid written to {args.out}", file=sys.stderr)
    return EXIT_OK


def _vision_model(args: argparse.Namespace, device: str, *, classifier: bool) -> Loaded:
    """The model, preset and labels --arch/--weights name, by `predict`'s rules; `classifier`: fc8 must be usable."""
    try:
        return load(args.weights, arch=args.arch, device=device, progress=not args.quiet,
                    sha256=getattr(args, "sha256", None), classifier=classifier)  # fmt: skip
    except ArchMismatch as err:
        raise UsageError(err.explain("--arch ")) from err


def _check_png(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {path}: the picture is written as PNG; give a file name ending in .png")


def _photo(x: torch.Tensor, preset: ImageClassification) -> torch.Tensor:
    """The preprocessed image back in [0, 1]: what the model saw, after the resize and crop."""
    mean = torch.tensor(preset.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(preset.std, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).expand(3, -1, -1).cpu()


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR


# name -> (declare its arguments, run it); the order is the order of `vggnet --help`.
# --- convert and export (issue 13) -----------------------------------------------------------------


def _add_convert(sub: SubParsers) -> None:
    p = sub.add_parser(
        "convert",
        parents=[_COMMON],
        help="write weights in another format (safetensors, .pth) or layout (timm)",
        description="Read weights from SRC and write them to DST in the format DST's suffix names (.safetensors, "
        "or .pth/.pt/.bin for PyTorch's zip format). SRC is "
        f"{SOURCE_RULES}; a file's format (PyTorch zip or pickle, safetensors, Keras .h5) is read from its content. "
        "The written file is read back and compared, and its SHA-256 printed.",
    )
    p.add_argument("src", metavar="SRC", help="the weights to read")
    p.add_argument("dst", metavar="DST", help="the file to write (.safetensors, .pth, .pt, .bin)")
    p.add_argument("--layout", choices=("vggnet", "timm"), default="vggnet", help="the keys DST gets (default vggnet)")
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) SRC must have")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_convert(args: argparse.Namespace) -> int:
    if Path(args.dst).suffix.lower() not in WRITE_SUFFIXES:
        raise UsageError(
            f"cannot tell the format of {args.dst!r} from its suffix; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    done = convert(args.src, args.dst, layout=args.layout, sha256=args.sha256, progress=not args.quiet)
    if args.json:
        _print_json(
            {"source": done.source, "path": str(done.path), "sha256": done.sha256, "bytes": done.size,
             "layout": done.layout, "tensors": done.tensors}
        )  # fmt: skip
    else:
        print(f"{done.sha256}  {done.path}")
    return EXIT_OK


def _add_export(sub: SubParsers) -> None:
    p = sub.add_parser(
        "export",
        parents=[_COMMON],
        help="export a model to ONNX, torch.export (pt2), TorchScript or AOTInductor",
        description="Build ARCH with --weights (" + SOURCE_RULES + ") and write OUT in --format, then run OUT once "
        "on a random batch against eager PyTorch (onnxruntime for ONNX, when installed) and print the largest "
        "difference and OUT's SHA-256.",
    )
    p.add_argument("arch", type=_model_arg, metavar="ARCH", help=f"one of {', '.join(list_models())}")
    p.add_argument("out", metavar="OUT", help="the file to write")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True, dest="fmt", help="what to write")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")
    p.add_argument(
        "--dynamic-batch", action=argparse.BooleanOptionalAction, default=True, help="any batch size (default on)"
    )
    p.add_argument("--dynamic-size", action="store_true", help="any height and width from 64 px (ONNX, pt2, aoti)")
    p.add_argument("--image-size", type=_side_arg, default=224, metavar="N", help="the input side (default 224)")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B", help="the batch with --no-dynamic-batch")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weights' dtype")
    p.add_argument(
        "--with-preset", action="store_true", help="take uint8 images: resize, crop and normalize inside the graph"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _run_export(args: argparse.Namespace) -> int:
    if args.with_preset and args.fmt == "torchscript":
        raise UsageError("--with-preset works with --format onnx, pt2 or aoti, not torchscript")
    loaded = load(args.weights, arch=args.arch, sha256=args.sha256, progress=not args.quiet)
    dtype = getattr(torch, args.dtype)
    model = loaded.model.eval()
    path = export(
        model, args.out, args.fmt, dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
        image_size=args.image_size, batch_size=args.batch_size, dtype=dtype, include_preset=args.with_preset,
        preset=loaded.preset,
    )  # fmt: skip
    reference: torch.nn.Module = model.to(dtype)
    if args.with_preset:
        reference = with_preset(reference, loaded.preset)
    batch = 2 if args.dynamic_batch else args.batch_size
    images = example_images(batch, args.image_size, include_preset=args.with_preset, dtype=dtype, seed=1)
    try:
        diff: float | None = check_export(path, args.fmt, reference, [images])
    except ImportError as err:  # onnxruntime is optional: the file is written, only the check is skipped
        logging.getLogger("vggnet").warning("not checked: %s", err)
        diff = None
    report = {
        "arch": loaded.arch, "weights": loaded.weights, "format": args.fmt, "path": str(path),
        "sha256": file_sha256(path), "bytes": path.stat().st_size, "dynamic_batch": args.dynamic_batch,
        "dynamic_size": args.dynamic_size, "image_size": args.image_size, "dtype": args.dtype,
        "with_preset": args.with_preset, "max_abs_diff": diff,
    }  # fmt: skip
    if args.json:
        _print_json(report)
    else:
        checked = "not checked" if diff is None else f"max |artifact - eager| = {diff:.3g} on a batch of {batch}"
        print(f"{report['sha256']}  {path}  ({args.fmt}, {report['bytes'] / 2**20:.1f} MiB; {checked})")
    return EXIT_OK


COMMANDS: dict[str, tuple[AddParser, RunCommand]] = {
    "summary": (_add_summary, _run_summary),
    "list": (_add_list, _run_list),
    "predict": (_add_predict, _run_predict),
    "evaluate": (_add_evaluate, _run_evaluate),
    "embed": (_add_embed, _run_embed),
    "download": (_add_download, _run_download),
    "verify": (_add_verify, _run_verify),
    "cache": (_add_cache, _run_cache),
    "bench": (_add_bench, _run_bench),
    "finetune": (_add_finetune, _run_finetune),
    "lpips": (_add_lpips, _run_lpips),
    "explain": (_add_explain, _run_explain),
    "features": (_add_features, _run_features),
    "convert": (_add_convert, _run_convert),
    "export": (_add_export, _run_export),
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
