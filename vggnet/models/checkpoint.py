"""Any weights source -> a model, its preset and its categories: the one loader behind builders, finetune, predict.

What a source may be is `sources.py`'s (`classify`, the rules `SOURCE_RULES` quotes in every error);
what a state dict must hold is `state_dicts.py`'s; what a fine-tuned checkpoint holds is `finetuned.py`'s.
`load` checks every argument, the device included, before anything is fetched, then reads the source
(through `hub.py`, verified) and builds the model the source names. A fine-tuned checkpoint's model is
built here too: a small one names the backbone it was trained on, which is loaded through `load` again.
The names callers use from those modules are importable from here as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import torch

from vggnet.checks import check_device, check_int
from vggnet.data.transforms import ImageClassification, keras_transforms
from vggnet.errors import ArchMismatch, BadCheckpointError, CheckpointMismatchError, UsageError
from vggnet.hub import fetch, hf_hub_file, load_state_dict_from_url, normalize_digest, sniff_format
from vggnet.models.config import IN_CHANNELS, arch_config, check_arch
from vggnet.models.finetuned import FORMAT, Finetuned, check_finetuned, read_finetuned
from vggnet.models.layouts import from_timm, layout_of, load_keras, read_state_dict
from vggnet.models.sources import (
    Source,
    WeightsSource,
    check_classifier,
    classify,
    hub_arch_of,
)
from vggnet.models.state_dicts import arch_of_keys, arch_of_state, key_list, model_from_state
from vggnet.models.vgg import NUM_CLASSES_MEANS, VGG, init_module, make_layers
from vggnet.models.weights import IMAGENET_CATEGORIES

__all__ = [
    "Loaded",
    "load",
    "load_finetuned",
]

logger = logging.getLogger(__name__)

_IMAGENET_CLASSES = 1000


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
        raise UsageError("sha256 is for a checkpoint file or URL; a record carries its own digest")
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
        name, state = hub_state_dict(source.text, sha256=digest, map_location=dev if dev is not None else "cpu")
        model = model_from_state(name, state, dev, kwargs)
        # timm's *.tv_in1k are torchvision's checkpoints: torchvision's preset and ImageNet's classes
        return Loaded(model, ImageClassification(crop_size=224), _labels(IMAGENET_CATEGORIES, model), name, source.text,
                      source)  # fmt: skip
    return _from_file(source, arch, dev, kwargs, digest, progress)


def hub_state_dict(
    name: str, *, sha256: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[str, dict[str, torch.Tensor]]:
    """The builder and the vggnet-layout state dict of a timm VGG repository on the Hugging Face Hub.

    Args:
        name: "hf-hub:owner/repository[@revision]", e.g. "hf-hub:timm/vgg16.tv_in1k".
        sha256: the digest (or 8+ hex digits) the file must have; None checks the one the Hub announces.
        map_location: where the tensors are loaded.

    Returns:
        (builder name, state dict), timm's layout converted bit-exactly.
    """
    arch = hub_arch_of(name)
    return arch, read_state_dict(hf_hub_file(name, sha256=sha256), map_location=map_location)


def _vggnet_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in vggnet's keys: timm's layout (a Hub model.safetensors) is converted, bit-exact."""
    return from_timm(state) if layout_of(state) == "timm" else state


def _fresh_classifier(arch: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (features only: a Keras `_notop` file) completed with a freshly initialised classifier."""
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        classifier = VGG(make_layers(row, batch_norm), init_weights=False).classifier
    classifier.to_empty(device="cpu")
    for m in classifier.children():
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
        found_arch = arch_of_keys(state)
        if found_arch is not None and found_arch != arch:
            raise ArchMismatch(text, found_arch, arch)
    model = model_from_state(name, state, device, kwargs, source=text)
    # files are assumed to expect ImageNet's preset; 1000 outputs are ImageNet's classes
    return Loaded(model, ImageClassification(crop_size=224), _labels(IMAGENET_CATEGORIES, model), name, text, source)


# --- fine-tuned checkpoints: their model -----------------------------------------------------------


def load_finetuned(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Finetuned:
    """Load a checkpoint written by `finetune` (or `vggnet finetune`): model in eval mode, classes, preset.

    Reads with `torch.load(weights_only=True)`; raises ValueError for a file that is not such a checkpoint
    (a plain state dict, say), naming what is missing.
    """
    checkpoint = read_finetuned(path, map_location)
    if checkpoint is None:
        raise BadCheckpointError(f"{path} is not a checkpoint written by vggnet finetune (no format {FORMAT!r})")
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
    check_finetuned(checkpoint, source)
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


def _on_backbone(
    arch: str, backbone: Mapping[str, str], trained: Mapping[str, torch.Tensor], device: str | torch.device | None,
    kwargs: dict[str, Any],
) -> VGG:  # fmt: skip
    name, digest = str(backbone["weights"]), str(backbone["sha256"])
    source = classify(name, arch)
    if source.kind == "record":
        assert source.record is not None
        if normalize_digest(digest) != source.record.sha256:
            raise BadCheckpointError(
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
        raise CheckpointMismatchError(f"the trained tensors {key_list(unexpected)} do not fit {arch} on {name}")
    model.load_state_dict({**expected, **trained}, strict=True)
    return model.eval()
