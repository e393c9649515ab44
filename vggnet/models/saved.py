"""vggnet's checkpoint format: one self-describing file a model is saved to (`save`) and read back from.

A file in this format says what it holds, so that everything that reads weights (`vggnet.load`, the
builders' `weights=`, `get_model`, `vggnet predict/evaluate/embed/export`) gets the model back with its
class names and its preprocessing, without a guess. Format "vggnet.checkpoint/1": a header and the tensors.

The header (JSON types; `header` makes it, `check_header` checks one field by field):

- "format": "vggnet.checkpoint/1". The number after "/" is the version: a reader refuses a later one,
  naming it; fields added later that an older reader may ignore do not change it.
- "arch": the builder, one of vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn.
- "head": "vgg" (fc6-fc8), "gap" (a global average pool and one Linear(512, N)) or "fc7".
- "global_pool" (optional, written only when not "avg"): "avg" (pool as the head was built) or "" (no
  pooling: the model returns pool5's map; num_classes is then 0), timm's argument.
- "in_chans": the input channels of the first convolution (an integer >= 1).
- "num_classes": the outputs of fc8 (an integer >= 0; 0: no fc8, the model returns relu7's 4096 values).
- "classes": the name of each output, in order (num_classes strings), or null when none were given.
- "preprocessing": the evaluation preset the model expects, or null when none was given:
  {"crop_size": int, "resize_size": int, "mean": [float] * in_chans, "std": [float] * in_chans,
  "interpolation": "bilinear" | "bicubic" | "nearest", "antialias": bool} (`ImageClassification`'s fields:
  resize the shorter side to resize_size, center-crop crop_size, scale to 0-1, normalize).
- "meta": free metadata, a JSON object (what `save(..., **meta)` was given; `finetune` writes its mode,
  epoch, val_acc and starting weights there).
- "backbone" (optional): {"weights", "url", "sha256"}: the tensors are only the trained part (fc8) and the
  rest is these weights, fetched and checked against the digest when loaded (what `finetune` writes for a
  linear probe).
- "vggnet": the version of vggnet that wrote the file (for people; readers ignore it).

The tensors are the model's state dict under its own keys (`features.N.*`, `classifier.N.*`), in the
dtypes they had. Two containers, chosen by the file's suffix:

- ".safetensors": the tensors as safetensors tensors; safetensors' metadata (a dict of strings) holds
  {"format": "pt", "vggnet": the header as JSON}. No pickle at all, memory-mapped, and the header reads
  with any safetensors tool. Needs the safetensors package (`pip install 'vggnet[safetensors]'`).
- ".pth", ".pt", ".bin": PyTorch's zip format, a dict of the header's fields plus "state_dict" (the
  tensors), read by `torch.load(path, weights_only=True)`. Other top-level keys are ignored (`finetune`'s
  last.pth keeps its training state under "train").

Missing classes or preprocessing are assumed as for a plain state dict, and said once at WARNING.
A dict holding vggnet's fields ("classes", "preprocessing") with no "format" is read as this format
says, its other fields read off the tensors; one with another "format" is refused. Checkpoints written
by `finetune` before this format ("vggnet.train.finetune/1", `finetuned.py`) are still read.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from vggnet import __version__
from vggnet.checks import field_problems
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.data.outputs import check_output
from vggnet.data.transforms import ImageClassification, create_transform
from vggnet.errors import (
    BadCheckpointError,
    DiskError,
    MissingDependency,
    MissingPathError,
    UsageError,
    UsageTypeError,
)
from vggnet.hub import WRITE_SUFFIXES, VerifiedFile, open_verified, read_tensors, sniff_format, weights_only_load
from vggnet.models.config import ARCHS, CONFIGS, GLOBAL_POOLS, HEADS, Layer
from vggnet.models.finetuned import FORMAT as FINETUNE_FORMAT
from vggnet.models.finetuned import check_finetuned
from vggnet.models.vgg import VGG, make_layers

__all__ = ["FORMAT", "Header", "Saved", "check_header", "header", "preset_of", "read_saved", "save"]

FORMAT = "vggnet.checkpoint/1"
_NAME, _VERSION = FORMAT.split("/")
METADATA_KEY = "vggnet"  # the safetensors metadata entry holding the header
PRESET_FIELDS = ("crop_size", "resize_size", "mean", "std", "interpolation", "antialias")
# fields only vggnet's checkpoints hold: a dict with them and no known "format" is not a plain state dict
_DESCRIBING = ("classes", "preprocessing")
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class Header:
    """What a checkpoint says about its tensors, checked; None where a dict without "format" does not say.

    Attributes:
        format: the format tag ("vggnet.checkpoint/1", or "finetune" for an older `finetune` file).
        arch: the architecture ("vgg16_bn", ...).
        head: the head ("vgg", "gap", "fc7" or "none").
        in_chans: the input channels.
        num_classes: the number of outputs (0: features only).
        classes: the name of each output, in order.
        preprocessing: the evaluation preset's fields (`ImageClassification`'s arguments).
        meta: free metadata, JSON values.
        backbone: the weights the model started from (name and SHA-256), where recorded.
        global_pool: "avg" or "" (no pooling), where recorded.
    """

    format: str
    arch: str | None = None
    head: str | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, str] | None = None
    global_pool: str | None = None

    def preset(self) -> ImageClassification | None:
        """The evaluation preset the header records, or None.

        Returns:
            An `ImageClassification` built from `preprocessing`, or None when the header has none.
        """
        return None if self.preprocessing is None else ImageClassification(**self.preprocessing)


@dataclass(frozen=True)
class Saved:
    """A checkpoint in vggnet's format (or an older `finetune` one) as read: its header and its tensors.

    Attributes:
        header: what the file says about the tensors.
        state: the tensors, keys as vggnet's `VGG` names them.
    """

    header: Header
    state: dict[str, torch.Tensor]


# --- writing ---------------------------------------------------------------------------------------


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    preset: ImageClassification | Mapping[str, Any] | None = None,
    **meta: Any,
) -> Path:
    """Save `model` with its class names and preset in vggnet's format, which every loader reads back.

    `vggnet.load(path)` returns the model with `classes` and `preset`; `vggnet.vgg16(weights=path)` and
    `vggnet evaluate DATA --weights path` use them too. The module docstring specifies the format.

    Args:
        model: a `VGG` (also inside `torch.compile` or DistributedDataParallel); its arch, head, input
            channels and number of classes are read off it.
        path: the file to write; its suffix picks the container: .safetensors (needs the safetensors
            package), or .pth/.pt/.bin (PyTorch's zip format). An existing file is replaced.
        classes: the name of each output, in order (num_classes of them); None: none recorded.
        preset: the evaluation preset the model expects (an `ImageClassification`, or a mapping of its
            fields); None: none recorded, and readers will assume ImageNet's 256/224, saying so.
        **meta: free metadata, JSON values (numbers, strings, lists, dicts, None), e.g. epoch=3.

    Returns:
        `path`, written through a temporary file in its folder (fsynced, read back and compared to what
        was saved, then renamed into place): whole or not at all.

    Raises:
        UsageError: a model vggnet cannot build again, classes or a preset that do not fit it, metadata
            that is not JSON, an unknown suffix, or a missing folder.
        MissingDependency: a .safetensors path without the safetensors package.
        MissingPathError: the destination's folder does not exist.
        DiskError: the file could not be written or does not read back as written; nothing was kept.
    """
    path = Path(path)
    container = WRITE_SUFFIXES.get(path.suffix.lower())
    if container is None:
        raise UsageError(
            f"cannot tell which format to write from {path.name!r}; use one of the suffixes "
            f"{', '.join(WRITE_SUFFIXES)} (.safetensors for safetensors, the others for PyTorch's zip format)"
        )
    net = unwrap(model)
    fields = header(net, classes=classes, preset=preset, meta=meta)
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    check_output(path)  # a folder, a symbolic link, a FIFO there: refused, one line
    if not path.parent.is_dir():
        raise MissingPathError(f"cannot write {path}: the folder {path.parent} does not exist; create it first")
    _publish(path, fields, state, container)
    return path


def unwrap(model: nn.Module) -> VGG:
    """The `VGG` inside `torch.compile` and DistributedDataParallel/DataParallel wrappers, else UsageTypeError."""
    net: object = model
    for _ in range(3):  # compile(DDP(model)) at most
        net = getattr(net, "_orig_mod", net)
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
    if not isinstance(net, VGG):
        raise UsageTypeError(
            f"vggnet saves a vggnet VGG, got {type(net).__name__}; save the model it was made from "
            "(an optimized or int8 copy is made from the VGG again after loading)"
        )
    return net


def header(
    model: VGG,
    *,
    classes: Sequence[str] | None = None,
    preset: ImageClassification | Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    backbone: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The header of `model`'s checkpoint (see the module docstring), every argument checked against it.

    Args:
        model: the VGG whose arch, head, in_chans and num_classes are recorded.
        classes: num_classes names, or None.
        preset: an `ImageClassification` or a mapping of its fields, or None.
        meta: JSON values.
        backbone: {"weights", "url", "sha256"} of the weights a head-only state dict is trained on.

    Returns:
        The header as plain JSON values.

    Raises:
        UsageError: what does not fit, named.
    """
    arch = arch_of_model(model)
    num_classes = model.num_classes
    names = _check_classes(classes, num_classes)
    fields: dict[str, Any] = {
        "format": FORMAT, "arch": arch, "head": model.head, "in_chans": model.in_channels,
        "num_classes": num_classes, "classes": names,
        "preprocessing": _preprocessing(preset, model.in_channels), "meta": _json_values(meta or {}),
        "vggnet": __version__,
    }  # fmt: skip
    if backbone is not None:
        fields["backbone"] = {k: str(backbone[k]) for k in ("weights", "url", "sha256")}
    if model.global_pool != "avg":  # written only where it is not the default: older readers read the rest
        fields["global_pool"] = model.global_pool
    return fields


def arch_of_model(model: VGG) -> str:
    """The builder whose layers `model.features` has, else UsageError (a model vggnet cannot build again)."""
    row: list[Layer] = []
    batch_norm = False
    for m in model.features.children():
        if isinstance(m, nn.Conv2d):
            row.append(m.out_channels)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            row.append("M")
        batch_norm = batch_norm or isinstance(m, nn.BatchNorm2d)
    for arch, (letter, bn) in ARCHS.items():
        if CONFIGS[letter] == tuple(row) and bn == batch_norm:
            with torch.device("meta"):
                built = VGG(make_layers(CONFIGS[letter], bn, model.in_channels), model.num_classes,
                            init_weights=False, head=model.head, global_pool=model.global_pool)  # fmt: skip
            expected = built.state_dict()
            found = model.state_dict()
            if {k: v.shape for k, v in expected.items()} == {k: v.shape for k, v in found.items()}:
                return arch
    raise UsageError(
        "the model's layers are none of vggnet's builders with a vgg, gap or fc7 head (a replaced classifier?), "
        "so no loader could build it again; save model.state_dict() with torch.save instead"
    )


def _check_classes(classes: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
        raise UsageTypeError("classes must be a list of names (strings), one per output of the model")
    if len(classes) != num_classes:
        raise UsageError(f"classes has {len(classes)} names but the model has {num_classes} outputs; give one each")
    return list(classes)


def _preprocessing(preset: ImageClassification | Mapping[str, Any] | None, in_chans: int) -> dict[str, Any] | None:
    """The header's "preprocessing" of `preset` (checked by building it), or None."""
    if preset is None:
        return None
    if isinstance(preset, Mapping):
        try:
            preset = ImageClassification(**preset)
        except TypeError as err:
            raise UsageTypeError(f"preset: {err}; its fields are {', '.join(PRESET_FIELDS)}") from None
    if not isinstance(preset, ImageClassification):
        raise UsageTypeError(
            f"preset must be an ImageClassification (e.g. weights.transforms()) or a dict of its fields, "
            f"got {type(preset).__name__}"
        )
    if len(preset.mean) != in_chans:
        raise UsageError(
            f"the preset normalizes {len(preset.mean)} channel(s) but the model reads {in_chans}; "
            f"give one mean and std per input channel"
        )
    out = {k: getattr(preset, k) for k in PRESET_FIELDS}
    return {**out, "mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std]}


def _json_values(meta: Mapping[str, Any]) -> dict[str, Any]:
    """`meta` as it reads back from JSON (tuples become lists), else UsageError naming the key."""
    for key, value in meta.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise UsageTypeError(f"metadata {key}={value!r:.60} is not a JSON value ({err})") from None
    values: dict[str, Any] = json.loads(json.dumps(dict(meta)))
    return values


def _publish(path: Path, fields: dict[str, Any], state: dict[str, torch.Tensor], container: str) -> None:
    """Write a temporary file next to `path`, fsync it, read it back and compare, then rename it into place."""
    writer = _safetensors() if container == "safetensors" else None  # a missing package before any file
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # a new name of our own (O_EXCL, no link followed), written and synced before anyone sees it
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666), "wb") as f:
            if writer is None:
                torch.save({**fields, "state_dict": state}, f)
        if writer is not None:  # safetensors writes by name (its tensors must not share storage)
            metadata = {"format": "pt", METADATA_KEY: json.dumps(fields)}
            writer.save_file({k: v.clone() for k, v in state.items()}, os.fspath(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _check_written(tmp, fields, state)
        os.replace(tmp, path)  # replaces a link at `path` itself, never what it points to
    except OSError as err:
        raise DiskError(f"could not write {path}: {err.strerror or err}; nothing was kept") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):  # the rename itself made durable, where the system allows
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as err:
        raise MissingDependency(
            "writing .safetensors needs the safetensors package: pip install 'vggnet[safetensors]', "
            "or save to a .pth file (the same fields in PyTorch's zip format)"
        ) from err
    return safetensors.torch


def _check_written(tmp: Path, fields: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """DiskError unless `tmp` reads back with the same header and the same tensors, bit for bit."""
    back = read_saved(tmp, "cpu")
    same = back is not None and _raw_header(tmp) == fields and back.state.keys() == state.keys()
    if back is None or not same or not all(torch.equal(back.state[k], v) for k, v in state.items()):
        raise DiskError("it does not read back as what was written (is the disk full or failing?)")


def preset_of(model: nn.Module) -> ImageClassification:
    """The evaluation preset `model.pretrained_cfg` describes (timm's keys).

    A checkpoint file's own for a model built from one (`vggnet.vgg16(weights=path)`), the record's for a
    record, ImageNet's 256/224 otherwise.

    Args:
        model: a VGG (or any module with timm's `pretrained_cfg`).

    Returns:
        An `ImageClassification` resizing to round(crop / crop_pct) and cropping input_size's side.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    preset = create_transform(
        tuple(cfg.get("input_size", (3, 224, 224))), crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )  # fmt: skip
    assert isinstance(preset, ImageClassification)  # train=False
    return preset


# --- reading ---------------------------------------------------------------------------------------


def read_saved(source: str | os.PathLike[str] | VerifiedFile, map_location: str | torch.device = "cpu") -> Saved | None:
    """A checkpoint in vggnet's format (either container) or an older `finetune` one; None for another file.

    A zip file is memory-mapped, so telling a 500 MB plain state dict apart costs no copy of it; a
    safetensors file's header is read alone, its tensors only when the header is vggnet's.

    Args:
        source: the file: a `VerifiedFile` (`vggnet.hub.open_verified`: read through the open file that
            was checked), or a path, opened once and read as it is.
        map_location: where the tensors are loaded.

    Returns:
        Its header and tensors, or None: a plain state dict (or a legacy-format file, which vggnet never writes).

    Raises:
        BadCheckpointError: a header that names a field wrong, a later version, or another format.
    """
    if not isinstance(source, VerifiedFile):
        with open_verified(Path(source)) as opened:
            return read_saved(opened, map_location)
    path, f = source.path, source.file
    if source.format == "safetensors":
        fields = _safetensors_fields(f, path)
        if fields is None:
            return None
        return Saved(check_header(fields, str(path), "safetensors"), read_tensors(source, map_location))
    if source.format != "zip":
        return None
    f.seek(0)  # the file whose magic was read is the one loaded; pickled code is refused
    obj = weights_only_load(f, path, map_location=map_location, mmap=True)
    if not isinstance(obj, Mapping):
        return None
    fmt = obj.get("format")
    if not (isinstance(fmt, str) and fmt.startswith("vggnet.")) and not any(k in obj for k in _DESCRIBING):
        return None  # a state dict, or another tool's checkpoint holding one
    return Saved(check_header(obj, str(path), "zip"), dict(obj["state_dict"]))


def _raw_header(path: Path) -> dict[str, Any] | None:
    """The header fields as stored (for the read-back check)."""
    if sniff_format(path) == "safetensors":
        with open(path, "rb") as f:
            return _safetensors_fields(f, path)
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in obj.items() if k != "state_dict"}


def _safetensors_fields(f: IO[bytes], path: Path) -> dict[str, Any] | None:
    """The JSON header under safetensors' metadata key "vggnet" of the open `f` (no safetensors package needed)."""
    f.seek(0)
    n = int.from_bytes(f.read(8), "little")
    raw = f.read(min(n, _SAFETENSORS_MAX_HEADER))
    try:
        text = (json.loads(raw).get("__metadata__") or {}).get(METADATA_KEY)
        fields = None if text is None else json.loads(text)  # TypeError: not a string, as safetensors requires
    except (ValueError, AttributeError, TypeError, RecursionError) as err:  # RecursionError: "[[[[..." nested deep
        raise BadCheckpointError(f"{path}: its safetensors header is not JSON ({err}); nothing was loaded") from None
    if fields is not None and not isinstance(fields, dict):
        raise BadCheckpointError(f"{path}: its {METADATA_KEY!r} metadata is not a JSON object; nothing was loaded")
    return fields


def check_header(obj: Mapping[str, Any], source: str, container: str = "zip") -> Header:
    """The header of a vggnet checkpoint, checked field by field.

    Args:
        obj: what the file holds: torch.load's dict ("zip"), or a safetensors file's "vggnet" header.
        source: the file, named in errors.
        container: "zip" (the tensors are under "state_dict") or "safetensors".

    Returns:
        The header (of vggnet's format, of `finetune`'s older one, or of a dict holding vggnet's fields
        without a "format", whose missing fields are read off the tensors).

    Raises:
        BadCheckpointError: one line naming every field that is missing or wrong, or the unknown format.
    """
    fmt = obj.get("format")
    if fmt == FINETUNE_FORMAT:
        check_finetuned(obj, source)
        problems = _value_problems(obj)
        if problems:
            raise BadCheckpointError(f"{source} (written by vggnet finetune, {fmt}): {'; '.join(problems)}")
        return _finetune_header(obj)
    if fmt is not None and fmt != FORMAT:
        raise BadCheckpointError(_unknown_format(fmt, source))
    problems = _problems(obj, fmt is not None, container == "zip")
    if problems:
        what = f"says it is in vggnet's format ({FORMAT})" if fmt else "holds vggnet's fields but no 'format'"
        raise BadCheckpointError(
            f"{source} {what}, but {'; '.join(problems)}; nothing was loaded: write it with "
            "vggnet.save(model, path, classes=..., preset=...)"
        )
    return Header(
        FORMAT, obj.get("arch"), obj.get("head"), obj.get("in_chans"), obj.get("num_classes"), obj.get("classes"),
        obj.get("preprocessing"), dict(obj.get("meta") or {}), obj.get("backbone"), obj.get("global_pool"),
    )  # fmt: skip


def _unknown_format(fmt: object, source: str) -> str:
    if isinstance(fmt, str) and fmt.startswith(_NAME + "/"):
        version = fmt.split("/", 1)[1]
        if version.isdigit() and int(version) > int(_VERSION):
            return (f"{source} is in {fmt}, written by a later vggnet; this one reads up to {FORMAT}: "
                    "upgrade vggnet (pip install -U vggnet)")  # fmt: skip
    return (f"{source} holds vggnet's checkpoint fields but its format is {str(fmt)[:60]!r}, which this vggnet "
            f"does not read ({FORMAT} or {FINETUNE_FORMAT}); nothing was loaded")  # fmt: skip


# field -> (its JSON type, whether "vggnet.checkpoint/1" requires it); a dict without "format" may leave any out
_FIELDS: Mapping[str, tuple[type | tuple[type, ...], bool]] = {
    "arch": (str, True), "head": (str, True), "in_chans": (int, True), "num_classes": (int, True),
    "classes": ((list, type(None)), False), "preprocessing": ((dict, type(None)), False), "meta": (dict, False),
    "backbone": (dict, False), "global_pool": (str, False),
}  # fmt: skip


def _problems(obj: Mapping[str, Any], versioned: bool, tensors: bool) -> list[str]:
    """What is missing or wrong in a header, one phrase each."""
    fields = {**_FIELDS, "state_dict": (dict, True)} if tensors else _FIELDS
    # the fields present, and those a versioned header must have: each missing or of the wrong type is named
    checked = {k: kind for k, (kind, required) in fields.items()
               if k in obj or (required and (versioned or k == "state_dict"))}  # fmt: skip
    problems = field_problems(obj, checked)
    if problems:
        return problems
    return _value_problems(obj)


def _value_problems(obj: Mapping[str, Any]) -> list[str]:
    """What is wrong with the values of well-typed fields."""
    problems = []
    arch, head, classes, n = obj.get("arch"), obj.get("head"), obj.get("classes"), obj.get("num_classes")
    if arch is not None and arch not in ARCHS:
        problems.append(f"'arch' is {arch[:40]!r}, not one of {', '.join(ARCHS)}")
    if head is not None and head not in HEADS:
        problems.append(f"'head' is {head[:40]!r}, not one of {', '.join(HEADS)}")
    pool = obj.get("global_pool")
    if pool is not None and (pool not in GLOBAL_POOLS or (pool == "" and obj.get("num_classes"))):
        problems.append(f"'global_pool' is {pool[:40]!r}, not 'avg' or '' (with num_classes 0)")
    for key, least in (("in_chans", 1), ("num_classes", 0)):
        if obj.get(key, least) < least:
            problems.append(f"{key!r} is {obj[key]}, under {least}")
    if classes is not None and not all(isinstance(c, str) for c in classes):
        problems.append("'classes' is not a list of names (strings)")
    elif classes is not None and n is not None and len(classes) != n:
        problems.append(f"'classes' has {len(classes)} names for {n} outputs")
    prep = obj.get("preprocessing")
    if prep is not None:
        try:
            preset = ImageClassification(**prep)
        except (TypeError, ValueError) as err:
            problems.append(f"'preprocessing' is not a valid preset ({str(err).splitlines()[0][:200]})")
        else:
            if "in_chans" in obj and len(preset.mean) != obj["in_chans"]:
                problems.append(f"'preprocessing' normalizes {len(preset.mean)} channels for {obj['in_chans']}")
    backbone = obj.get("backbone")
    if backbone is not None and not all(isinstance(backbone.get(k), str) for k in ("weights", "sha256")):
        problems.append("'backbone' does not name its 'weights' and 'sha256'")
    return problems


def _finetune_header(obj: Mapping[str, Any]) -> Header:
    """A checkpoint `finetune` wrote before vggnet's format ("vggnet.train.finetune/1"), as a header."""
    classes = list(obj["classes"])
    meta = {k: obj.get(k) for k in ("mode", "epoch", "val_acc", "weights")}
    return Header(FINETUNE_FORMAT, str(obj["arch"]), str(obj.get("head", "vgg")), int(obj["in_chans"]), len(classes),
                  classes, dict(obj["preprocessing"]), meta, obj.get("backbone"))  # fmt: skip
