"""list, download, verify, cache: the checkpoint records and the files the cache (or a mirror) holds."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vggnet.cli.output import PROG, error, mib, print_json, table
from vggnet.errors import EXIT_FAILURE, EXIT_OK, ChecksumError, UnknownWeightsError, UsageError

if TYPE_CHECKING:
    from vggnet.hub import CachedFile
    from vggnet.models.weights import WeightsEnum

# --- the records, by name and by file ---------------------------------------------------------------
# WEIGHTS_ENUMS is read at call time, so that tests can stand in their own records.


def _all_weights() -> list[WeightsEnum]:
    """Every distinct record (aliases such as DEFAULT skipped), in the order of the builders."""
    from vggnet.models import weights

    return [member for enum in weights.WEIGHTS_ENUMS.values() for member in enum]


def _select_weights(names: Sequence[str]) -> list[WeightsEnum]:
    """Records named by builder ("vgg16": its DEFAULT) or in full ("VGG16_Weights.IMAGENET1K_FEATURES")."""
    from vggnet.models import weights
    from vggnet.models.weights import weights_by_name

    enums = weights.WEIGHTS_ENUMS
    by_class = {enum.__name__.lower(): enum for enum in enums.values()}
    chosen: list[WeightsEnum] = []
    for name in names:
        enum_name, _, member = name.partition(".")
        enum = enums.get(name.lower()) or by_class.get(enum_name.lower())
        if enum is None or (member == "" and name.lower() not in enums):
            valid = [*enums, *(str(m) for m in _all_weights())]
            raise UnknownWeightsError(f"unknown model or weights {name!r}; valid: {', '.join(valid)}")
        found = weights_by_name(f"{enum.__name__}.{member or 'DEFAULT'}")
        if found not in chosen:
            chosen.append(found)
    return chosen


def _records_by_file() -> dict[str, WeightsEnum]:
    """file name -> its record."""
    return {member.value.file_name: member for member in _all_weights()}


# --- list -----------------------------------------------------------------------------------------


def add_list(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet list`'s description and arguments.

    The arguments: only --json.

    Args:
        p: the `list` subcommand's parser, filled in place.
    """
    p.description = (
        "Every model and every checkpoint record (VGG16_Weights.IMAGENET1K_FEATURES included) with "
        "ImageNet acc@1/acc@5, parameters, GFLOPS (multiply-adds at 224x224), file size, and whether the file "
        "is already in the cache."
    )
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run_list(args: argparse.Namespace) -> int:
    """Print every model and checkpoint record with its accuracy, cost, file size and whether it is cached.

    Args:
        args: the parsed arguments of `vggnet list` (see `add_list`).

    Returns:
        0 (`EXIT_OK`); nothing is downloaded.
    """
    from vggnet.hub import cache_dir
    from vggnet.models import weights

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
        print_json(entries)
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
    print(table(header, rows, right=(2, 3, 4, 5, 6)))
    print(f"\ncache: {where}  (VGGNET_HOME moves it; 'vggnet verify' re-hashes what is there)")
    return EXIT_OK


# --- download -------------------------------------------------------------------------------------


def add_download(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet download`'s description and arguments.

    The arguments: NAME..., --all, --to DIR.

    Args:
        p: the `download` subcommand's parser, filled in place.
    """
    p.description = (
        "Fetch and verify checkpoints: into the cache (so later loads need no network), or with "
        "--to into a directory that VGGNET_MIRROR can point at (as a path, or served over HTTP). A model name "
        "means its DEFAULT weights. VGGNET_MIRROR, if set, is where files are fetched from."
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="a model (vgg16) or weights (VGG16_Weights.IMAGENET1K_V1)")
    p.add_argument("--all", action="store_true", help="every checkpoint record (9 files, about 4.6 GiB)")
    p.add_argument("--to", type=Path, metavar="DIR", help="build a mirror in DIR instead of filling the cache")


def run_download(args: argparse.Namespace) -> int:
    """Fetch and verify the named checkpoints into the cache, or into the mirror folder --to names.

    Args:
        args: the parsed arguments of `vggnet download` (see `add_download`).

    Returns:
        0 (`EXIT_OK`) when every file was fetched and verified; 1 (`EXIT_FAILURE`) when any failed: each failure is
            reported on stderr and the others are still fetched.

    Raises:
        UsageError: neither a name nor --all was given (exit 2).
    """
    from vggnet.hub import add_to_mirror, fetch

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
            error(f"{member}: {err}")
            continue
        print(f"{member}  {mib(path.stat().st_size)}  {path}")
    if failed:
        error(f"{failed} of {len(chosen)} downloads failed")
        return EXIT_FAILURE
    return EXIT_OK


# --- verify ---------------------------------------------------------------------------------------


def add_verify(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet verify`'s description and arguments.

    The arguments: the optional DIR and --json.

    Args:
        p: the `verify` subcommand's parser, filled in place.
    """
    p.description = (
        "Hash every checkpoint in the cache (or in DIR, e.g. a mirror built by 'download --to') and "
        "compare it with its record, with the digest recorded when it was downloaded and checked, or with the "
        "digest in its name. 'unknown' means there is nothing to compare with. Exits 1 if any file is corrupt."
    )
    p.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="default: the cache directory")
    p.add_argument("--json", action="store_true", help="print a JSON list")


def run_verify(args: argparse.Namespace) -> int:
    """Re-hash every checkpoint in the cache (or DIR) and compare it with its record, stamp or name.

    Args:
        args: the parsed arguments of `vggnet verify` (see `add_verify`).

    Returns:
        0 (`EXIT_OK`) when no file is corrupt; 1 (`EXIT_FAILURE`) when any is, each named on stderr with the fix.

    Raises:
        UsageError: DIR is given and is not a folder (exit 2).
    """
    from tqdm import tqdm

    from vggnet.hub import cache_dir, cached_files, verify_file

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
        print_json(results)
    elif not results:
        print(f"no checkpoints in {folder}")
    else:
        rows = [(r["status"], r["file"], mib(r["size"]), r["against"] or "-") for r in results]
        print(table(("status", "file", "size", "checked against"), rows, right=(2,)))
        unknown = sum(r["status"] == "unknown" for r in results)
        print(f"\n{folder}: {len(results) - unknown - len(corrupt)} ok, {len(corrupt)} corrupt, {unknown} unknown")
    fix = "remove it with 'vggnet cache --remove {}'" if args.folder is None else "replace it with a good copy"
    for r in corrupt:
        if r["against"] == _IN_NAME:
            error(
                f"{r['file']} is corrupt or misnamed: SHA-256 {r['sha256']} does not start with {r['expected']}, "
                "the hex part of its name, which is the only reference (torch.hub's name-<sha256 prefix>.pth "
                "convention); if the name only looks like one (a date, an epoch), the file may be fine: "
                f"rename it; otherwise {fix.format(r['file'])} and download it again"
            )
            continue
        error(
            f"{r['file']} is corrupt: SHA-256 {r['sha256']} does not match {r['expected']}; "
            f"{fix.format(r['file'])} and download it again"
        )
    return EXIT_FAILURE if corrupt else EXIT_OK


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


# --- cache ----------------------------------------------------------------------------------------


def add_cache(p: argparse.ArgumentParser) -> None:
    """Declare `vggnet cache`'s description and arguments.

    The arguments: --remove NAME... or --clear, and --json.

    Args:
        p: the `cache` subcommand's parser, filled in place.
    """
    p.description = (
        "List the files in the cache directory ($VGGNET_HOME, else torch.hub's checkpoint "
        "directory, shared with torchvision) with their sizes, or remove some. Removing a checkpoint also "
        "removes its stamp, its zip copy, partial downloads and copies moved aside as corrupt. Partial files "
        "and locks a running download holds are kept and reported."
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


def run_cache(args: argparse.Namespace) -> int:
    """List the cache's files with their sizes and weights, or remove the ones --remove or --clear select.

    Args:
        args: the parsed arguments of `vggnet cache` (see `add_cache`).

    Returns:
        0 (`EXIT_OK`); files a running download holds are kept and named on stderr.
    """
    from vggnet.hub import cache_dir, cached_files, remove_cached

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
            print_json({"folder": str(folder), "removed": removed, "freed": result.freed, "skipped": skipped})
        else:
            if not args.quiet:
                for entry in result.files:
                    print(f"removed {entry.path.name} ({mib(entry.size)})")
            print(f"freed {mib(result.freed)} in {folder}")
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
        print_json({"folder": str(folder), "files": listing, "total": sum(e.size for e in entries)})
        return EXIT_OK
    if not entries:
        print(f"the cache is empty: {folder}")
        return EXIT_OK
    rows = [(f["file"], mib(f["size"]), f["weights"] or "-", f["kind"]) for f in listing]
    print(table(("file", "size", "weights", "kind"), rows, right=(1,)))
    print(f"\n{len(entries)} files, {mib(sum(e.size for e in entries))} in {folder}")
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
    raise UsageError(f"{what} not in the cache; cached: {cached}")
