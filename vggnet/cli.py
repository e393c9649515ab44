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
   `ChecksumError`, `DownloadError` exit 1. `main()` prints one line on stderr, with a traceback only
   under `--debug`. Do not call `sys.exit` and do not catch these yourself.
4. Respect `args.quiet` (no progress bars, no chatter; pass `progress=not args.quiet`) and print
   results to stdout, everything else to stderr. Library code logs; only this module prints.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .builders import list_models
from .checkpoint import SOURCE_RULES, ArchMismatch, Loaded, WeightsFileNotFound, available_devices, check_device, load
from .config import MIN_SIZE, check_arch
from .finetune import AUGMENTS, HEADS, IMAGE_SUFFIXES, MODES, finetune
from .summary import format_summary, plot_summary, summarize
from .transforms import load_image

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
    from .cache import CachedFile
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
    """argparse type for one side in pixels: VGG's five 2x2 max-pools need at least MIN_SIZE."""
    value = _positive(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"VGG needs at least {MIN_SIZE} px (five 2x2 max-pools), got {text!r}")
    return value


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
        "output shape, parameters, multiply-adds and activation memory, then the totals. Computed on the "
        "meta device: no weights, no memory, any input size.",
    )
    p.add_argument("arch", type=_model_arg, metavar="MODEL", help=f"one of {', '.join(list_models())}")
    p.add_argument("--input-size", type=_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--batch-size", type=_positive, default=1, metavar="B", help="for the activation memory")
    p.add_argument("--num-classes", type=_positive, default=1000, metavar="K", help="width of fc8 (default 1000)")
    p.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="draw parameters and MACs per layer (.svg; .png with matplotlib)"
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
        help="classify images: top-k labels with probabilities",
        description="Classify images (files, directories or glob patterns) with a model and its weights: the "
        "weights' preprocessing, then the top-k labels with their probabilities. --weights is "
        f"{SOURCE_RULES}. The model is the one the weights name (a fine-tuned checkpoint's, a state dict's "
        "keys), else --arch (default vgg16); a plain file's labels are ImageNet's when it has 1000 outputs.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns")
    p.add_argument("--arch", type=_model_arg, metavar="MODEL", help="the model (default: the weights' own, else vgg16)")
    p.add_argument("--weights", default="DEFAULT", metavar="NAME|PATH|URL|none", help=_WEIGHTS_HELP)
    p.add_argument("--sha256", metavar="HEX", help="the digest (or its first 8+ hex digits) a file or URL must have")
    p.add_argument("--topk", type=_positive, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--device", type=_device_arg, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--batch-size", type=_positive, default=16, metavar="B", help="images per forward pass")
    p.add_argument(
        "--image-size", type=_side_arg, metavar="N", help="crop size (default: the weights', 224); resize to N*256/224"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _image_paths(patterns: Sequence[str]) -> list[Path]:
    """Files as given, images in directories (not recursive), glob matches; in order, each once."""
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the directory {pattern}")
        elif path.exists():
            found = [path]
        elif any(c in pattern for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not found:
                raise UsageError(f"no files match {pattern!r}")
        else:
            raise UsageError(f"{pattern}: no such image file or directory")
        paths.extend(p for p in found if p not in paths)
    return paths


def _classifier(args: argparse.Namespace, device: str) -> Loaded:
    """The model, preset and labels --weights names (checkpoint.load's rules); --arch defaults to the source's own."""
    try:
        return load(
            args.weights, arch=args.arch, device=device, progress=not args.quiet, sha256=args.sha256, classifier=True
        )
    except ArchMismatch as err:
        raise UsageError(err.explain("--arch ")) from err


def _run_predict(args: argparse.Namespace) -> int:
    paths = _image_paths(args.images)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    classifier = _classifier(args, device)
    preset = classifier.preset if args.image_size is None else classifier.preset.resized(args.image_size)
    model = classifier.model.eval()
    categories = classifier.categories
    assert categories is not None  # classifier=True refused a record without a usable classifier
    k = min(args.topk, len(categories))
    results: list[dict[str, Any]] = []
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        batch, inputs = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                inputs.append(preset(load_image(path)))
            except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
                failed += 1
                _error(f"cannot read the image {path}: {err}")
                results.append({"image": str(path), "error": str(err)})
                continue
            batch.append(path)
        if not batch:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(inputs).to(device)).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(batch, top.values.tolist(), top.indices.tolist()):
            predictions = [{"index": i, "label": categories[i], "probability": p} for p, i in zip(values, indices)]
            results.append({"image": str(path), "predictions": predictions})
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r["image"]])
    if args.json:
        _print_json(
            {"arch": classifier.arch, "weights": classifier.weights, "device": device, "topk": k, "results": results}
        )
    else:
        for result in results:
            if "predictions" not in result:
                continue
            print(result["image"])
            for pred in result["predictions"]:
                print(f"  {pred['probability']:7.2%}  {pred['label']} ({pred['index']})")
    return EXIT_FAILURE if failed else EXIT_OK


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

    from .cache import ChecksumError, cache_dir, cached_files, verify_file

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
    from .cache import cache_dir, cached_files, remove_cached

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

_DTYPES = ("float32", "bfloat16", "float16")


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
    p.add_argument("--image-size", type=_size_arg, default=(224, 224), metavar="N|HxW", help="default 224")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", choices=_DTYPES, help="default bfloat16 on CUDA GPUs that have it, float32 on CPU")
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


# name -> (declare its arguments, run it); the order is the order of `vggnet --help`.
COMMANDS: dict[str, tuple[AddParser, RunCommand]] = {
    "summary": (_add_summary, _run_summary),
    "list": (_add_list, _run_list),
    "predict": (_add_predict, _run_predict),
    "download": (_add_download, _run_download),
    "verify": (_add_verify, _run_verify),
    "cache": (_add_cache, _run_cache),
    "bench": (_add_bench, _run_bench),
    "finetune": (_add_finetune, _run_finetune),
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
