"""What a weights source is, decided without reading or fetching anything: `classify` and its rules.

What `weights` (a builder's argument, `finetune(weights=)`, `vggnet predict/finetune --weights`) may be,
one set of rules (`SOURCE_RULES`, quoted in every error):

- None, "none" or "random": random initialisation (ImageNet's preset and categories for 1000 outputs);
- a member of a weights enum (`VGG16_Weights.DEFAULT`) or its name: "DEFAULT", "IMAGENET1K_V1" (looked
  up in `arch`'s enum) or "VGG16_Weights.IMAGENET1K_V1" (which names its model); or a `Weights` record;
- an http(s):// or file:// URL, or a local file: a string with a folder separator, starting with "~",
  or ending in one of `WEIGHT_FILE_SUFFIXES`, a `os.PathLike`, or any existing file. The file is a plain
  state dict in either torch serialization format (or a training checkpoint holding one under
  "state_dict" or "model"), or a checkpoint in vggnet's format (`vggnet.save`, `vggnet finetune`; `saved.py`)
  with its classes and preset,
  or (told by its content, `formats`) a safetensors file in vggnet's or timm's layout, or a Keras
  VGG16/VGG19 `.h5` file (with Keras' preset; a `_notop` file gets a new classifier);
- "hf-hub:owner/name[@revision]": a timm VGG on the Hugging Face Hub (`hfhub`), e.g. hf-hub:timm/vgg16.tv_in1k.

The architecture is the one the source names (an enum member, a fine-tuned checkpoint, a state dict's
keys); a given `arch` that differs is an `ArchMismatch` naming both. `checkpoint.load` reads the
source `classify` names, once it has checked every argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from vggnet.errors import ArchMismatch, UnknownWeightsError, UsageError, UsageTypeError, WeightsFileNotFound
from vggnet.hub import is_hf_hub, parse_hf_hub
from vggnet.models import weights as records
from vggnet.models.config import ARCHS, RANDOM_NAMES, SOURCE_RULES, URL_SCHEMES, WEIGHT_FILE_SUFFIXES
from vggnet.models.weights import Weights, WeightsEnum, own_member, weights_by_name

__all__ = [
    "Source",
    "WeightsSource",
    "check_classifier",
    "classify",
]

WeightsSource = None | str | os.PathLike[str] | Weights | WeightsEnum


# --- errors ----------------------------------------------------------------------------------------


# --- what a source is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a `weights` argument names, decided without reading or fetching anything.

    Attributes:
        kind: "random", "record", "file", "url" or "hub" (an hf-hub: name).
        text: the argument as text; for a file, the expanded path.
        record: for a record, the record.
        label: how messages name it: a record's name ("VGG16_Weights.IMAGENET1K_V1"), or its URL.
        arch: the architecture the source names, where it names one.
    """

    kind: Literal["random", "record", "file", "url", "hub"]
    text: str
    record: Weights | None = None
    label: str = ""
    arch: str | None = None


def classify(weights: WeightsSource, arch: str | None = None) -> Source:
    """Decide what `weights` is (see the module docstring) without reading or fetching anything.

    Args:
        weights: None, a record, a record's name, a file, a URL or an "hf-hub:" name.
        arch: the architecture asked for; it picks the enum a short record name ("DEFAULT") is looked up
            in (vgg16's when None) and must match the one the weights name.

    Returns:
        What the source is, with its record and architecture where it names them.

    Raises:
        UsageTypeError: `weights` is of no type a weights argument takes.
        UsageError: an unsupported URL scheme, or a Hub name whose architecture cannot be told.
        ArchMismatch: the weights name another architecture than `arch`.
        WeightsFileNotFound: a file that is not there (or a folder).
        UnknownWeightsError: a name no record has; the message lists the valid ones.
    """
    if weights is None:
        return Source("random", "None")
    if isinstance(weights, Weights):
        return Source("record", weights.url, weights, weights.url)
    member = own_member(weights)  # torchvision's members too, matched by URL to vggnet's records
    if isinstance(member, WeightsEnum):
        return _member(member, arch)
    if not isinstance(weights, (str, os.PathLike)):
        raise UsageTypeError(
            f"weights must be a record name, a file path, a URL or None, got {type(weights).__name__} {weights!r} "
            "(a weights enum member and a vggnet.Weights record work too)"
        )
    text = os.fspath(weights)
    if isinstance(weights, str) and is_hf_hub(text):
        hub_arch = hub_arch_of(text)
        if arch is not None and hub_arch != arch:
            raise ArchMismatch(text, hub_arch, arch)
        return Source("hub", text, label=text, arch=hub_arch)
    scheme = urlsplit(text).scheme.lower()
    if scheme in URL_SCHEMES:
        if scheme == "file":
            _existing(text, Path(unquote(urlsplit(text).path)))
        return Source("url", text)
    if "://" in text:
        raise UsageError(f"weights {text!r} has an unsupported URL scheme {scheme!r}; weights is {SOURCE_RULES}")
    looks_like_path = isinstance(weights, os.PathLike) or any(sep in text for sep in ("/", os.sep))
    looks_like_path = looks_like_path or text.lower().endswith(WEIGHT_FILE_SUFFIXES) or text.startswith("~")
    if looks_like_path:
        return Source("file", str(_existing(text, Path(text).expanduser())))
    if text.lower() in RANDOM_NAMES:
        return Source("random", text)
    if Path(text).is_file():  # an existing file named without folder or suffix is still a file
        return Source("file", text)
    return _member(_named(text, arch), arch, text)


def hub_arch_of(name: str) -> str:
    """The builder a Hub repository holds, read from its name: "hf-hub:timm/vgg16_bn.tv_in1k" -> "vgg16_bn".

    Args:
        name: "hf-hub:owner/repository[@revision]".

    Returns:
        The builder name, the part of the repository name before its first ".".

    Raises:
        ValueError: `name` is not a Hub name, or its repository name starts with no builder's name.
    """
    repo_id = parse_hf_hub(name).repo_id
    arch = repo_id.split("/", 1)[1].split(".", 1)[0]
    if arch not in ARCHS:
        raise UsageError(
            f"{name!r}: cannot tell the architecture from the repository name {repo_id!r} (the part before the "
            f"first '.' must be one of {', '.join(ARCHS)}, as in timm/vgg16.tv_in1k)"
        )
    return arch


def _existing(text: str, path: Path) -> Path:
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "not found"
        raise WeightsFileNotFound(
            f"weights file {text} {problem}; weights is {SOURCE_RULES}; no such checkpoint file exists at "
            f"{path.absolute()}"
        )
    return path


def _named(name: str, arch: str | None) -> WeightsEnum:
    """The enum member "VGG16_Weights.IMAGENET1K_V1" names, or "DEFAULT" in `arch`'s enum (vgg16's by default)."""
    try:
        return weights_by_name(name, arch=arch)
    except UnknownWeightsError as err:  # "unknown weights ... for VGG16_Weights; valid: ..."
        raise UnknownWeightsError(f"{err}; weights is {SOURCE_RULES}") from None


def _member(member: WeightsEnum, arch: str | None, text: str | None = None) -> Source:
    named = next((a for a, enum in records.WEIGHTS_ENUMS.items() if isinstance(member, enum)), None)
    if arch is not None and named is not None and named != arch:
        raise ArchMismatch(str(member), named, arch)
    return Source("record", text or str(member), member.value, str(member), named)


def check_classifier(source: Source) -> None:
    """Refuse a record whose classifier is unusable (VGG16_Weights.IMAGENET1K_FEATURES) where logits are needed.

    Args:
        source: what `classify` returned.

    Raises:
        UsageError: (a ValueError) the record has no classifier; the message names the one to use.
    """
    if source.record is not None and source.record.categories is None:
        raise UsageError(
            f"{source.label} has no classifier (only `features` holds usable values, fc6 and fc7 are NaN); "
            "use IMAGENET1K_V1"
        )
