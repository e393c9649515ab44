"""The checkpoints `finetune` wrote before vggnet's own format (`saved.py`), and what a loaded one gives back.

`FORMAT` ("vggnet.train.finetune/1") is their "format" entry: a zip-format dict of "arch", "in_chans",
"classes", "preprocessing", "state_dict" (and "head", "mode", "epoch", "val_acc", "weights", "backbone"),
still read by every loader (`saved.check_header`); `check_finetuned` names every missing or mistyped field.
`finetune` now writes `saved.FORMAT`. A small checkpoint holds only what was trained and names its
backbone (`backbone_identity`). `Finetuned` is what `checkpoint.load_finetuned` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vggnet.checks import field_problems
from vggnet.data.transforms import ImageClassification
from vggnet.errors import BadCheckpointError, UsageError
from vggnet.models.config import ARCHS
from vggnet.models.sources import Source
from vggnet.models.vgg import VGG

__all__ = ["FORMAT", "Finetuned", "backbone_identity", "check_finetuned"]

FORMAT = "vggnet.train.finetune/1"  # the "format" entry of a checkpoint `finetune` wrote before vggnet 0.3


@dataclass
class Finetuned:
    """A fine-tuned checkpoint loaded back: `preset(image)` then `model(batch)`, labels from `classes`.

    Attributes:
        model: the network with the trained weights, in eval mode on the device it was loaded to.
        classes: the class names, in the order of the model's outputs (the folders `finetune` trained on).
        preset: the preprocessing the model was trained and validated with (resize, crop, mean, std).
        arch: the builder name, one of `vggnet.models.config.ARCHS`.
        in_chans: 3 for RGB input, 1 for a model trained on gray images.
        info: what else the checkpoint records: "mode", "epoch", "val_acc", "weights" (and "head", "backbone"
            when written).
    """

    model: VGG
    classes: list[str]
    preset: ImageClassification
    arch: str
    in_chans: int
    info: dict[str, Any]  # mode, epoch, val_acc, weights


# what a checkpoint written by `finetune` holds besides "format", and the type of each
_FINETUNED_FIELDS: Mapping[str, type] = {"arch": str, "in_chans": int, "classes": list, "preprocessing": dict,
                                         "state_dict": dict}  # fmt: skip


def check_finetuned(checkpoint: Mapping[str, Any], source: str) -> None:
    """Check that a checkpoint `finetune` wrote has every field a loader needs, each of the right type.

    Args:
        checkpoint: the dict read from the file (its "format" says `FORMAT`).
        source: the file's name, for the message.

    Raises:
        BadCheckpointError: "arch", "in_chans", "classes", "preprocessing" or "state_dict" is missing or of the
            wrong type, "classes" is not a non-empty list of names, or "arch" is not a vggnet builder; the message
            names every problem at once and nothing is loaded.
    """
    problems = field_problems(checkpoint, _FINETUNED_FIELDS)
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


def backbone_identity(source: Source, sha256: str | None) -> dict[str, str]:
    """What a small checkpoint records of the weights it was trained on: their name and SHA-256.

    Args:
        source: the weights trained on.
        sha256: for a file or URL source, the digest of the file the weights were loaded from (the
            caller pins the load to it); a record carries its own.

    Returns:
        {"weights": name, "url": url, "sha256": digest}.

    Raises:
        UsageError: a file or URL source without its digest, or random weights (nothing to identify).
    """
    if source.kind == "record":
        assert source.record is not None
        return {"weights": source.label, "url": source.record.url, "sha256": source.record.sha256}
    if sha256 is None:
        raise UsageError(f"a {source.kind} source needs the digest of the file it was loaded from")
    return {"weights": source.text, "url": source.text, "sha256": sha256}
