"""Any weights source -> a model, its preset and its categories: the one loader behind builders, finetune, predict.

What `weights` (a builder's argument, `finetune(weights=)`, `vggnet predict/finetune --weights`) may be,
one set of rules (`SOURCE_RULES`, quoted in every error):

- None, "none" or "random": random initialisation (ImageNet's preset and categories for 1000 outputs);
- a member of a weights enum (`VGG16_Weights.DEFAULT`) or its name: "DEFAULT", "IMAGENET1K_V1" (looked
  up in `arch`'s enum) or "VGG16_Weights.IMAGENET1K_V1" (which names its model); or a `Weights` record;
- an http(s):// or file:// URL, or a local file: a string with a folder separator, starting with "~",
  or ending in one of `WEIGHT_FILE_SUFFIXES`, a `os.PathLike`, or any existing file. The file is a plain
  state dict in either torch serialization format (or a training checkpoint holding one under
  "state_dict" or "model"), or a checkpoint written by `vggnet finetune` with its classes and preset,
  or (told by its content, `formats`) a safetensors file in vggnet's or timm's layout, or a Keras
  VGG16/VGG19 `.h5` file (with Keras' preset; a `_notop` file gets a new classifier);
- "hf-hub:owner/name[@revision]": a timm VGG on the Hugging Face Hub (`hfhub`), e.g. hf-hub:timm/vgg16.tv_in1k.

The architecture is the one the source names (an enum member, a fine-tuned checkpoint, a state dict's
keys); a given `arch` that differs is an `ArchMismatch` naming both. Every argument, the device
included, is checked before anything is fetched.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import torch
from torch import nn

from . import weights as records
from .checks import check_int
from .config import ARCHS, IN_CHANNELS, arch_config, check_arch
from .formats import from_timm, layout_of, load_keras, sniff_format
from .hfhub import is_hf_hub, load_hf_hub, parse_hf_hub
from .hub import BadCheckpointError, UnsafeCheckpointError, fetch, load_state_dict_from_url, weights_only_load
from .model import NUM_CLASSES_MEANS, VGG, adapt_input_conv, init_module, make_layers
from .transforms import ImageClassification, keras_transforms
from .weights import IMAGENET_CATEGORIES, Weights, WeightsEnum, normalize_digest, own_member

__all__ = [
    "FORMAT",
    "BadCheckpointError",
    "SOURCE_RULES",
    "WEIGHT_FILE_SUFFIXES",
    "ArchMismatch",
    "DeviceError",
    "Finetuned",
    "Loaded",
    "Source",
    "UnsafeCheckpointError",
    "WeightsFileNotFound",
    "WeightsSource",
    "arch_of_state",
    "available_devices",
    "backbone_identity",
    "check_classifier",
    "check_device",
    "classify",
    "load",
    "load_checkpoint_state",
    "load_finetuned",
    "model_from_state",
    "read_finetuned",
]

logger = logging.getLogger(__name__)

FORMAT = "vggnet.finetune/1"  # the "format" entry of a checkpoint written by `finetune`
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".ckpt", ".bin", ".safetensors", ".h5")
RANDOM_NAMES = ("none", "random")
URL_SCHEMES = ("http", "https", "file")
SOURCE_RULES = (
    "a record name (DEFAULT, IMAGENET1K_V1, VGG16_Weights.IMAGENET1K_V1), the path of an existing checkpoint "
    f"file ({', '.join(WEIGHT_FILE_SUFFIXES)}: a state dict, a vggnet finetune checkpoint, safetensors or Keras "
    "weights), an http(s):// or file:// URL, a Hugging Face Hub name (hf-hub:timm/vgg16.tv_in1k), "
    "or none for random initialisation"
)

WeightsSource = None | str | os.PathLike[str] | Weights | WeightsEnum

_HEAD = "classifier.6."
_GAP_HEAD = "classifier.0."  # fc8 of a head="gap" model
_FIRST = "features.0.weight"
_ZIP_MAGIC = b"PK\x03\x04"
_IMAGENET_CLASSES = 1000


# --- errors ----------------------------------------------------------------------------------------


class ArchMismatch(ValueError):
    """The weights are for another architecture than the one asked for."""

    def __init__(self, source: str, found: str, wanted: str) -> None:
        self.source, self.found, self.wanted = source, found, wanted
        super().__init__(self.explain("arch="))

    def explain(self, option: str) -> str:
        """The message, the argument spelled as the caller takes it ("arch=" here, "--arch " in the CLI)."""
        quote = repr if option.endswith("=") else str
        return (
            f"{self.source} holds {self.found} weights, not {self.wanted}; they are not for "
            f"{option}{quote(self.wanted)}: leave {option.strip(' =')} out or pass {option}{quote(self.found)}"
        )


class WeightsFileNotFound(FileNotFoundError):
    """`weights` names a local file that is not there (or a folder)."""


class DeviceError(RuntimeError, ValueError):
    """A device this machine does not have (a RuntimeError as torch's own, and a ValueError: a bad argument)."""


# --- checks that cost nothing ----------------------------------------------------------------------


def available_devices() -> list[str]:
    """The devices a model can be put on here: cpu, then cuda and cuda:N, then mps."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found += ["mps", "mps:0"]  # one MPS device
    return found


def check_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device if this machine has it ("meta" too); DeviceError listing the valid ones if not."""
    if device is None:
        return None
    try:
        dev: torch.device | None = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    # torch.device spells "cuda:0" and "mps:0" as given; any "cpu:N" is the one CPU device.
    if dev is None or (dev.type not in ("cpu", "meta") and str(dev) not in available_devices()):
        raise DeviceError(f"no device {str(device)!r} here; valid: {', '.join(available_devices())}")
    return dev


@dataclass(frozen=True)
class Source:
    """What a `weights` argument names, decided without reading or fetching anything.

    `kind` is "random", "record", "file" (`text` is the expanded path), "url" or "hub" (an hf-hub: name). For a record,
    `record` is it and `label` its name ("VGG16_Weights.IMAGENET1K_V1", or the record's URL); `arch`
    is the architecture the source names, where it names one.
    """

    kind: Literal["random", "record", "file", "url", "hub"]
    text: str
    record: Weights | None = None
    label: str = ""
    arch: str | None = None


def classify(weights: WeightsSource, arch: str | None = None) -> Source:
    """Decide what `weights` is (see the module docstring); raises for a missing file or an unknown name.

    `arch` picks the enum a short record name ("DEFAULT") is looked up in (vgg16 when None).
    """
    if weights is None:
        return Source("random", "None")
    if isinstance(weights, Weights):
        return Source("record", weights.url, weights, weights.url)
    member = own_member(weights)  # torchvision's members too, matched by URL to vggnet's records
    if isinstance(member, WeightsEnum):
        return _member(member, arch)
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be a record name, a file path, a URL or None, got {type(weights).__name__} {weights!r} "
            "(a weights enum member and a vggnet.Weights record work too)"
        )
    text = os.fspath(weights)
    if isinstance(weights, str) and is_hf_hub(text):
        hub_arch = parse_hf_hub(text).arch
        if arch is not None and hub_arch != arch:
            raise ArchMismatch(text, hub_arch, arch)
        return Source("hub", text, label=text, arch=hub_arch)
    scheme = urlsplit(text).scheme.lower()
    if scheme in URL_SCHEMES:
        if scheme == "file":
            _existing(text, Path(unquote(urlsplit(text).path)))
        return Source("url", text)
    if "://" in text:
        raise ValueError(f"weights {text!r} has an unsupported URL scheme {scheme!r}; weights is {SOURCE_RULES}")
    looks_like_path = isinstance(weights, os.PathLike) or any(sep in text for sep in ("/", os.sep))
    looks_like_path = looks_like_path or text.lower().endswith(WEIGHT_FILE_SUFFIXES) or text.startswith("~")
    if looks_like_path:
        return Source("file", str(_existing(text, Path(text).expanduser())))
    if text.lower() in RANDOM_NAMES:
        return Source("random", text)
    if Path(text).is_file():  # an existing file named without folder or suffix is still a file
        return Source("file", text)
    return _member(_named(text, arch), arch, text)


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
    enums = records.WEIGHTS_ENUMS  # read at call time: tests stand in their own records
    enum_name, dot, member = name.partition(".")
    by_name = {enum.__name__: enum for enum in enums.values()}
    if dot and enum_name not in by_name:
        valid = ", ".join(str(m) for enum in enums.values() for m in enum.__members__.values())
        raise ValueError(f"unknown weights {name!r}; valid: {valid}; weights is {SOURCE_RULES}")
    try:
        return by_name[enum_name].from_name(member) if dot else enums[arch or "vgg16"].from_name(name)
    except ValueError as err:  # "unknown weights ... for VGG16_Weights; valid: ..."
        raise ValueError(f"{err}; weights is {SOURCE_RULES}") from None


def _member(member: WeightsEnum, arch: str | None, text: str | None = None) -> Source:
    named = next((a for a, enum in records.WEIGHTS_ENUMS.items() if isinstance(member, enum)), None)
    if arch is not None and named is not None and named != arch:
        raise ArchMismatch(str(member), named, arch)
    return Source("record", text or str(member), member.value, str(member), named)


def check_classifier(source: Source) -> None:
    """ValueError for a record whose classifier is unusable (VGG16_Weights.IMAGENET1K_FEATURES)."""
    if source.record is not None and source.record.categories is None:
        raise ValueError(
            f"{source.label} has no classifier (only `features` holds usable values, fc6 and fc7 are NaN); "
            "use IMAGENET1K_V1"
        )


# --- the loader ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model built from a weights source, with what it needs to be used.

    `categories` are the labels of its outputs (None for a record whose classifier is unusable, such as
    VGG16_Weights.IMAGENET1K_FEATURES); `weights` says what was loaded ("VGG16_Weights.IMAGENET1K_V1",
    a path, a URL, "random"); `info` holds a fine-tuned checkpoint's mode, epoch, val_acc and weights.
    """

    model: VGG
    preset: ImageClassification
    categories: Sequence[str] | None
    arch: str
    weights: str
    source: Source
    info: Mapping[str, Any] = field(default_factory=dict)


def load(
    weights: WeightsSource,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    sha256: str | None = None,
    classifier: bool = False,
    **model_kwargs: Any,
) -> Loaded:
    """Build the model `weights` describes (see the module docstring) on `device`.

    `arch`: default the source's own, else vgg16. `num_classes`: default the source's; another width
    gets a fresh fc8. `in_chans`: default the source's (3 for records); a 3-channel first convolution is
    adapted. `sha256`: the digest (or 8+ hex digits) a file or URL must have. `classifier=True` refuses,
    before any download, a record whose classifier is unusable. Other keyword arguments go to `VGG`.
    """
    arch = check_arch(arch) if arch is not None else None
    dev = check_device(device)
    if num_classes is not None:
        check_int("num_classes", num_classes, least=0, what=NUM_CLASSES_MEANS)
    if in_chans is not None:
        check_int("in_chans", in_chans)
    digest = normalize_digest(sha256) if sha256 is not None else None
    source = classify(weights, arch)
    if source.kind == "record" and digest is not None:
        raise ValueError("sha256 is for a checkpoint file or URL; a record carries its own digest")
    if classifier:
        check_classifier(source)
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans

    if source.kind == "random":
        name = arch or "vgg16"
        model = _random_model(name, dev, kwargs)
        labels = _labels(IMAGENET_CATEGORIES, model)  # ImageNet's for 1000 outputs
        return Loaded(model, ImageClassification(crop_size=224), labels, name, "random", source)
    if source.kind == "record":
        record = source.record
        assert record is not None
        state = _vggnet_layout(record.get_state_dict(progress=progress, map_location=dev if dev is not None else "cpu"))
        name = arch or source.arch or arch_of_state(state, source.label)
        model = model_from_state(name, state, dev, kwargs, nonfinite=record.nonfinite, source=source.label)
        categories = record.categories if record.categories is None else _labels(record.categories, model)
        return Loaded(model, record.transforms(), categories, name, source.label, source)
    if source.kind == "hub":
        name, state = load_hf_hub(source.text, sha256=digest, map_location=dev if dev is not None else "cpu")
        model = model_from_state(name, state, dev, kwargs)
        # timm's *.tv_in1k are torchvision's checkpoints: torchvision's preset and ImageNet's classes
        return Loaded(model, ImageClassification(crop_size=224), _labels(IMAGENET_CATEGORIES, model), name, source.text,
                      source)  # fmt: skip
    return _from_file(source, arch, dev, kwargs, digest, progress)


def _vggnet_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in vggnet's keys: timm's layout (a Hub model.safetensors) is converted, bit-exact."""
    return from_timm(state) if layout_of(state) == "timm" else state


def _fresh_classifier(arch: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (features only: a Keras `_notop` file) completed with a freshly initialised classifier."""
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        classifier = VGG(make_layers(row, batch_norm), init_weights=False).classifier
    classifier.to_empty(device="cpu")
    for m in classifier:
        init_module(m)
    return {**{f"classifier.{k}": v for k, v in classifier.state_dict().items()}, **state}


def _from_keras(
    source: Source, path: Path, arch: str | None, device: torch.device | None, kwargs: dict[str, Any]
) -> Loaded:
    """A Keras VGG16/VGG19 .h5 file: its model (RGB input, see `formats`), Keras' preset, ImageNet's classes."""
    found, state = load_keras(path)
    if arch is not None and arch != found:
        raise ArchMismatch(source.text, found, arch)
    notop = not any(k.startswith("classifier.") for k in state)
    if notop:
        logger.info("%s has no top (fc6-fc8): the classifier is freshly initialised", source.text)
        state = _fresh_classifier(found, state)
    model = model_from_state(found, state, device, kwargs)
    categories = None if notop else _labels(IMAGENET_CATEGORIES, model)
    return Loaded(model, keras_transforms(), categories, found, source.text, source)


def _random_model(arch: str, device: torch.device | None, kwargs: dict[str, Any]) -> VGG:
    row, batch_norm = arch_config(arch)
    in_chans = kwargs.pop("in_chans", IN_CHANNELS)
    with device if device is not None else nullcontext():
        return VGG(make_layers(row, batch_norm, in_chans), **kwargs)


def _labels(categories: Sequence[str] | None, model: VGG) -> Sequence[str]:
    """The source's labels when they fit fc8, else "class 0", "class 1", ... (a new head)."""
    # IMAGENET_CATEGORIES reads its file on first use: its known size keeps building a random model off the disk
    size = _IMAGENET_CLASSES if categories is IMAGENET_CATEGORIES else len(categories or ())
    if categories is not None and size == model.num_classes:
        return categories
    return [f"class {i}" for i in range(model.num_classes)]


def _from_file(
    source: Source,
    arch: str | None,
    device: torch.device | None,
    kwargs: dict[str, Any],
    digest: str | None,
    progress: bool,
) -> Loaded:
    """A local file or a URL: a checkpoint written by `finetune` (its classes and preset), or a state dict."""
    text = source.text
    if source.kind == "url" and urlsplit(text).scheme.lower() != "file":
        path = fetch(text, sha256=digest, progress=progress)  # cached, verified by sha256 or its name
    else:
        path = Path(unquote(urlsplit(text).path)) if source.kind == "url" else Path(text)
        if digest is not None:
            fetch(str(path), sha256=digest, progress=progress)  # checked in place; raises ChecksumError
    if sniff_format(path) == "hdf5":
        return _from_keras(source, path, arch, device, kwargs)
    map_location = device if device is not None else "cpu"
    checkpoint = read_finetuned(path, map_location)
    if checkpoint is not None:
        found = str(checkpoint["arch"])
        if arch is not None and arch != found:
            raise ArchMismatch(text, found, arch)
        finetuned = _finetuned(checkpoint, device, kwargs, text)
        return Loaded(finetuned.model, finetuned.preset, _labels(finetuned.classes, finetuned.model), found, text,
                      source, finetuned.info)  # fmt: skip
    state = _vggnet_layout(
        load_state_dict_from_url(str(path), sha256=digest, map_location=map_location, progress=progress)
    )
    if arch is None:
        name = arch_of_state(state, text)
    else:
        name = arch
        found_arch = _arch_of_keys(state)
        if found_arch is not None and found_arch != arch:
            raise ArchMismatch(text, found_arch, arch)
    model = model_from_state(name, state, device, kwargs, source=text)
    # files are assumed to expect ImageNet's preset; 1000 outputs are ImageNet's classes
    return Loaded(model, ImageClassification(crop_size=224), _labels(IMAGENET_CATEGORIES, model), name, text, source)


# --- fine-tuned checkpoints ------------------------------------------------------------------------


@dataclass
class Finetuned:
    """A fine-tuned checkpoint loaded back: `preset(image)` then `model(batch)`, labels from `classes`."""

    model: VGG
    classes: list[str]
    preset: ImageClassification
    arch: str
    in_chans: int
    info: dict[str, Any]  # mode, epoch, val_acc, weights


def load_finetuned(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Finetuned:
    """Load a checkpoint written by `finetune` (or `vggnet finetune`): model in eval mode, classes, preset.

    Reads with `torch.load(weights_only=True)`; raises ValueError for a file that is not such a checkpoint
    (a plain state dict, say), naming what is missing.
    """
    checkpoint = read_finetuned(path, map_location)
    if checkpoint is None:
        raise ValueError(f"{path} is not a checkpoint written by vggnet finetune (no format {FORMAT!r})")
    finetuned = _finetuned(checkpoint, map_location, {}, str(path))
    finetuned.model.eval()
    return finetuned


def _finetuned(
    checkpoint: Mapping[str, Any],
    device: str | torch.device | None,
    kwargs: dict[str, Any],
    source: str = "the fine-tuned checkpoint",
) -> Finetuned:
    """The model of a fine-tuned checkpoint (eval mode; its own fc8 and in_chans unless `kwargs` say otherwise).

    A checkpoint with a "backbone" entry holds only what was trained: the backbone is loaded (and
    verified) from the record, file or URL it names, then the trained tensors are put on it.
    """
    _check_finetuned(checkpoint, source)
    arch, classes = str(checkpoint["arch"]), list(checkpoint["classes"])
    in_chans = int(checkpoint["in_chans"])
    try:
        preset = ImageClassification(**checkpoint["preprocessing"])
    except (TypeError, ValueError) as err:
        raise BadCheckpointError(f"{source}: its preprocessing is not a valid preset ({err})") from None
    head = str(checkpoint.get("head", "vgg"))
    kwargs = {"num_classes": len(classes), "in_chans": in_chans, "head": head, **kwargs}
    in_chans = kwargs["in_chans"]
    backbone = checkpoint.get("backbone")
    if backbone is None:
        model = model_from_state(arch, checkpoint["state_dict"], device, kwargs, source=source).eval()
    else:
        model = _on_backbone(arch, backbone, checkpoint["state_dict"], device, kwargs)
    info = {k: checkpoint.get(k) for k in ("mode", "epoch", "val_acc", "weights")}  # the head: model.head
    return Finetuned(model, classes, preset, arch, in_chans, info)


# what a checkpoint written by `finetune` holds besides "format", and the type of each
_FINETUNED_FIELDS: Mapping[str, type] = {"arch": str, "in_chans": int, "classes": list, "preprocessing": dict,
                                         "state_dict": dict}  # fmt: skip


def _check_finetuned(checkpoint: Mapping[str, Any], source: str) -> None:
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
        raise ValueError(f"a {source.kind} source has no file to identify")
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    return {"weights": source.text, "url": source.text, "sha256": digest}


def _on_backbone(
    arch: str, backbone: Mapping[str, str], trained: Mapping[str, torch.Tensor], device: str | torch.device | None,
    kwargs: dict[str, Any],
) -> VGG:  # fmt: skip
    name, digest = str(backbone["weights"]), str(backbone["sha256"])
    source = classify(name, arch)
    if source.kind == "record":
        assert source.record is not None
        if normalize_digest(digest) != source.record.sha256:
            raise ValueError(
                f"this checkpoint was trained on {name} with SHA-256 {digest}, but that record now has "
                f"{source.record.sha256}; fine-tune again on the current weights"
            )
        base = load(source.record, arch=arch, device=device, **kwargs)
    else:
        base = load(name, arch=arch, device=device, sha256=digest, **kwargs)
    model = base.model
    expected = model.state_dict()
    unexpected = sorted(k for k in trained if k not in expected or expected[k].shape != trained[k].shape)
    if unexpected:
        raise RuntimeError(f"the trained tensors {_first(unexpected)} do not fit {arch} on {name}")
    model.load_state_dict({**expected, **trained}, strict=True)
    return model.eval()


def read_finetuned(path: str | os.PathLike[str], map_location: str | torch.device) -> dict[str, Any] | None:
    """The contents of a checkpoint written by `finetune`, else None (another file is not read in full).

    `finetune` writes the zip format, so a legacy-format file is someone else's; a zip file is
    memory-mapped, so telling a plain 500 MB state dict apart costs no copy of it.
    """
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return None
        # the file whose magic was read is the one loaded; pickled code: UnsafeCheckpointError
        checkpoint = weights_only_load(f, Path(path), map_location=map_location, mmap=True)
    return checkpoint if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT else None


# --- state dicts -----------------------------------------------------------------------------------


def model_from_state(
    arch: str,
    state: Mapping[str, torch.Tensor],
    device: str | torch.device | None,
    kwargs: dict[str, Any],
    *,
    nonfinite: tuple[str, ...] = (),
    source: str = "the checkpoint",
) -> VGG:
    """Build `arch` on the meta device and assign a checkpoint's state dict (new head and in_chans handled).

    `kwargs` go to `VGG`, except `in_chans` (default: the checkpoint's own). The tensors are checked as
    `load_checkpoint_state` says; `nonfinite` and `source` are passed on to it.
    """
    _check_tensors(state, source)  # before reading shapes: every value a tensor
    first = state.get(_FIRST)
    in_chans = kwargs.pop("in_chans", first.shape[1] if first is not None and first.dim() == 4 else IN_CHANNELS)
    if first is not None and first.dim() == 4 and first.shape[1] == IN_CHANNELS != in_chans:
        logger.info("%s: adapting the pretrained first convolution from 3 to %d input channels", arch, in_chans)
        state = {**state, _FIRST: adapt_input_conv(first, in_chans)}
    state_head = _head_of_state(state)
    head = kwargs.setdefault("head", state_head)
    if head == "gap" != state_head:  # fc6-fc7 do not fit a gap head: every layer of `features` is kept
        logger.info(
            "%s: head='gap': the checkpoint's classifier is left out, classifier.0 is freshly initialised", arch
        )
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    head_key = _GAP_HEAD if head == "gap" else _HEAD
    fc8 = state.get(head_key + "weight")
    checkpoint_classes = fc8.shape[0] if fc8 is not None and fc8.dim() == 2 else None
    num_classes = kwargs.setdefault("num_classes", checkpoint_classes or 1000)
    new_head = (checkpoint_classes is not None and num_classes != checkpoint_classes) or (head == "gap" and fc8 is None)
    kwargs["init_weights"] = False
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        model = VGG(make_layers(row, batch_norm, in_chans), **kwargs)
    if new_head:
        logger.info(
            "%s: checkpoint has %d classes, num_classes=%d: loading every layer but fc8, which is freshly initialised",
            arch, checkpoint_classes, num_classes,
        )  # fmt: skip
        state = {k: v for k, v in state.items() if not k.startswith(head_key)}
    fresh = (head_key,) if new_head else ()
    load_checkpoint_state(model, state, device=device, fresh=fresh, nonfinite=nonfinite, source=source)
    return model


def _head_of_state(state: Mapping[str, torch.Tensor]) -> str:
    """ "gap" for a state dict whose only classifier layer is a Linear(512, N), else "vgg"."""
    first = state.get(_GAP_HEAD + "weight")
    gap = first is not None and first.shape[1] == 512 and "classifier.3.weight" not in state
    return "gap" if gap else "vgg"


def _arch_of_keys(state: Mapping[str, torch.Tensor]) -> str | None:
    keys = {k for k in state if not k.endswith("num_batches_tracked")}  # the 2017 checkpoints lack them
    head = _head_of_state(state)
    for arch in ARCHS:
        row, batch_norm = arch_config(arch)
        with torch.device("meta"):
            layout = VGG(make_layers(row, batch_norm), init_weights=False, head=head).state_dict()
        if keys == {k for k in layout if not k.endswith("num_batches_tracked")}:
            return arch
    return None


def arch_of_state(state: Mapping[str, torch.Tensor], source: str = "the state dict") -> str:
    """The builder whose checkpoints have exactly `state`'s keys (fc8's width and the input channels may differ).

    Raises ValueError naming the valid builders when none fits; `source` names the state dict in that message.
    """
    arch = _arch_of_keys(state)
    if arch is None:
        raise ValueError(f"{source} is not a VGG checkpoint: its keys match none of {', '.join(ARCHS)}")
    return arch


def load_checkpoint_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    fresh: tuple[str, ...] = (),
    *,
    nonfinite: tuple[str, ...] = (),
    source: str = "the checkpoint",
) -> None:
    """Assign `state` to a model built on the meta device, strictly, once its tensors pass the checks below.

    Tolerates only missing BatchNorm `num_batches_tracked` (the 2017 checkpoints lack them) and the
    modules named by the `fresh` key prefixes, which are created on `device` and initialised. Every
    tensor must be dense, on the CPU or `device` (where it is then moved), floating point (cast to the
    model's dtype; integers only for `num_batches_tracked`) and finite, except under the `nonfinite`
    key prefixes (a record's `Weights.nonfinite`). Otherwise BadCheckpointError names the tensors and
    nothing is assigned; `source` names the checkpoint in the messages.
    """
    _check_tensors(state, source)
    expected = model.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    missing = [k for k in missing if not k.startswith(fresh)] if fresh else missing
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in state.keys() & expected.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        hint = " (is it a checkpoint of another VGG variant?)" if len(missing) + len(unexpected) > 8 else ""
        raise RuntimeError(
            f"checkpoint does not fit the model{hint}: missing keys {_first(missing)}; "
            f"unexpected keys {_first(unexpected)}; shape mismatches {_first(wrong_shape)}"
        )
    target = torch.device(device) if device is not None else torch.device("cpu")
    full = _checked_values(state, expected, target, nonfinite, source)
    for k in expected.keys() - state.keys():
        if k.endswith("num_batches_tracked"):
            full[k] = torch.zeros((), dtype=torch.long, device=device)
    for name, module in model.named_modules():
        if fresh and (name + ".").startswith(fresh):
            module.to_empty(device=device or "cpu")
            init_module(module)
            full.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    model.load_state_dict(full, strict=True, assign=True)


# --- what a checkpoint's tensors may be --------------------------------------------------------------

_COUNTER = "num_batches_tracked"  # BatchNorm's step counter: the one integer tensor of a VGG state dict


def _check_tensors(state: object, source: str) -> None:
    """BadCheckpointError unless `state` maps names to dense tensors (nothing read from the tensors' data)."""
    if not isinstance(state, Mapping):
        raise BadCheckpointError(f"{source} is not a state dict (a mapping of names to tensors): it is a "
                                 f"{type(state).__name__}")  # fmt: skip
    odd = [f"{str(k)[:60]!r} ({type(v).__name__})" for k, v in state.items()
           if not (isinstance(k, str) and isinstance(v, torch.Tensor))]  # fmt: skip
    if odd:
        raise BadCheckpointError(
            f"{source} is not a state dict: its entries {_some(odd)} are not tensors under string names "
            "(a training checkpoint? pass the state dict it holds)"
        )
    # sparse, quantized and nested tensors have no plain shape to compare, let alone assign
    odd = [f"{k} ({_layout(t)})" for k, t in state.items() if _layout(t)]
    if odd:
        raise BadCheckpointError(
            f"{source} cannot be loaded: {_some(odd)} {'is' if len(odd) == 1 else 'are'} not dense; "
            "nothing was loaded: save dense tensors (t.to_dense(), t.dequantize())"
        )


def _layout(tensor: torch.Tensor) -> str:
    """What makes `tensor` other than a plain dense tensor ("sparse_coo", "quantized", "nested"), else ""."""
    if tensor.is_nested:
        return "nested"
    if tensor.is_quantized:
        return "quantized"
    return "" if tensor.layout == torch.strided else str(tensor.layout).removeprefix("torch.")


def _checked_values(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    target: torch.device,
    nonfinite: tuple[str, ...],
    source: str,
) -> dict[str, torch.Tensor]:
    """`state`'s dense tensors in the model's dtypes on `target`, once each is placed, typed and finite (see above)."""
    bad: dict[str, list[str]] = {}  # what is wrong -> the tensors it is wrong with
    for key, tensor in state.items():
        if tensor.device.type == "meta" and target.type != "meta":
            bad.setdefault("on the meta device, with no values (saved from a model never materialised)", []).append(key)
        elif not _placed(tensor.device, target):
            allowed = "the CPU" if target.type == "cpu" else f"the CPU or {target}"
            bad.setdefault(f"not on {allowed} (pass device= to load there)", []).append(f"{key} ({tensor.device})")
        elif key.endswith(_COUNTER) and (tensor.dtype.is_floating_point or tensor.dtype.is_complex
                                         or tensor.dtype == torch.bool):  # fmt: skip
            bad.setdefault("not of an integer dtype (BatchNorm counts batches)", []).append(f"{key} ({tensor.dtype})")
        elif not key.endswith(_COUNTER) and not tensor.dtype.is_floating_point:
            bad.setdefault("not floating point", []).append(f"{key} ({tensor.dtype})")
    if bad:
        problems = "; ".join(f"{_some(keys)} {'is' if len(keys) == 1 else 'are'} {what}" for what, keys in bad.items())
        raise BadCheckpointError(f"{source} cannot be loaded: {problems}; nothing was loaded")
    # (cast first: a float64 value beyond float32's range becomes inf, and is then refused)
    out = {k: t.to(device=target, dtype=expected[k].dtype).contiguous() for k, t in state.items()}
    if target.type != "meta":  # meta tensors hold no values to check
        _check_finite(out, nonfinite, source)
    return out


def _placed(where: torch.device, target: torch.device) -> bool:
    """True for a tensor on the CPU or on `target` ("cuda" takes any GPU index, "cuda:1" only its own)."""
    if where.type == "cpu":
        return True
    return where.type == target.type and (target.index is None or where.index == target.index)


def _check_finite(state: Mapping[str, torch.Tensor], nonfinite: tuple[str, ...], source: str) -> None:
    """BadCheckpointError naming the tensors that hold NaN or Inf, outside the `nonfinite` key prefixes."""
    flagged = []
    for key, tensor in state.items():
        if not tensor.dtype.is_floating_point or tensor.numel() == 0 or key.startswith(nonfinite):
            continue
        low, high = torch.aminmax(tensor)  # NaN propagates, Inf is an extreme: two scalars, no copy of the tensor
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            flagged.append(f"{key} ({nan:,} NaN, {inf:,} Inf)")
    if flagged:
        raise BadCheckpointError(
            f"{source} holds NaN or Inf in {len(flagged)} tensor(s): {_some(flagged)}; nothing was loaded. "
            "Use a checkpoint from before the values diverged; a record whose layers are known to hold "
            "them (the features-only VGG16 classifier) declares them in Weights(nonfinite=(key prefixes,))"
        )


def _first(items: list[str], n: int = 8) -> str:
    shown = [item if len(item) <= 100 else item[:97] + "..." for item in items[:n]]  # the file chose the keys
    return str(shown) + (f" and {len(items) - n} more" if len(items) > n else "")


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
