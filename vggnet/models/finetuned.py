"""A checkpoint written by `finetune`: its format, its fields and their checks, and reading one back.

`read_finetuned` tells such a checkpoint (a zip-format file whose "format" is `FORMAT`) from any other
file without reading the other in full; `check_finetuned` names every missing or mistyped field. A
small checkpoint holds only what was trained and names its backbone (`backbone_identity`). Its model
is built by `checkpoint.load_finetuned`, since a backbone is loaded through `checkpoint.load` itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from vggnet.data.transforms import ImageClassification
from vggnet.errors import BadCheckpointError, UsageError
from vggnet.hub import weights_only_load
from vggnet.models.config import ARCHS
from vggnet.models.sources import Source
from vggnet.models.vgg import VGG

__all__ = ["FORMAT", "Finetuned", "backbone_identity", "read_finetuned"]

FORMAT = "vggnet.train.finetune/1"  # the "format" entry of a checkpoint written by `finetune`

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class Finetuned:
    """A fine-tuned checkpoint loaded back: `preset(image)` then `model(batch)`, labels from `classes`."""

    model: VGG
    classes: list[str]
    preset: ImageClassification
    arch: str
    in_chans: int
    info: dict[str, Any]  # mode, epoch, val_acc, weights


def read_finetuned(
    path: str | os.PathLike[str], map_location: str | torch.device, file: IO[bytes] | None = None
) -> dict[str, Any] | None:
    """The contents of a checkpoint written by `finetune`, else None (another file is not read in full).

    `finetune` writes the zip format, so a legacy-format file is someone else's; a zip file is
    memory-mapped, so telling a plain 500 MB state dict apart costs no copy of it. `file`: `path`
    already open (the file checked against a digest), read instead of opening `path` again.
    """
    with open(path, "rb") if file is None else contextlib.nullcontext(file) as f:
        f.seek(0)
        if f.read(4) != _ZIP_MAGIC:
            return None
        # the file whose magic was read is the one loaded; pickled code: UnsafeCheckpointError
        checkpoint = weights_only_load(f, Path(path), map_location=map_location, mmap=True)
    return checkpoint if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT else None


# what a checkpoint written by `finetune` holds besides "format", and the type of each
_FINETUNED_FIELDS: Mapping[str, type] = {"arch": str, "in_chans": int, "classes": list, "preprocessing": dict,
                                         "state_dict": dict}  # fmt: skip


def check_finetuned(checkpoint: Mapping[str, Any], source: str) -> None:
    """BadCheckpointError naming every field of a fine-tuned checkpoint that is missing or of the wrong type."""
    problems = []
    for key, kind in _FINETUNED_FIELDS.items():
        value = checkpoint.get(key)
        if key not in checkpoint:
            problems.append(f"{key!r} is missing")
        elif not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{key!r} is a {type(value).__name__}, not {'an' if kind is int else 'a'} {kind.__name__}")
    classes, arch = checkpoint.get("classes"), checkpoint.get("arch")
    if isinstance(classes, list) and not (classes and all(isinstance(c, str) for c in classes)):
        problems.append("'classes' is not a non-empty list of names")
    if isinstance(arch, str) and arch not in ARCHS:
        problems.append(f"'arch' is {arch[:40]!r}, not one of {', '.join(ARCHS)}")
    if problems:
        raise BadCheckpointError(
            f"{source} says it was written by vggnet finetune ({FORMAT}), but {'; '.join(problems)}; "
            "nothing was loaded: write it again with vggnet finetune"
        )


def backbone_identity(source: Source, path: Path | None) -> dict[str, str]:
    """What a small checkpoint records of the weights it was trained on: their name and SHA-256.

    `path` is the file a file or URL source was read from (hashed here); a record carries its digest.
    """
    if source.kind == "record":
        assert source.record is not None
        return {"weights": source.label, "url": source.record.url, "sha256": source.record.sha256}
    if path is None:
        raise UsageError(f"a {source.kind} source has no file to identify")
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    return {"weights": source.text, "url": source.text, "sha256": digest}
