"""Any weights source -> a model, its preset and its categories: the one loader behind builders, finetune, predict.

What a source may be is `sources.py`'s (`classify`, the rules `SOURCE_RULES` quotes in every error);
what a state dict must hold is `state_dicts.py`'s; what vggnet's own checkpoints hold (`vggnet.save`, `finetune`)
is `saved.py`'s: such a file brings its classes and preset. A file that records neither (a plain state dict) is
assumed to expect ImageNet's preset and labels, which is said once per file at WARNING.
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

import torch

from vggnet.checks import check_choice, check_device, check_float, check_int
from vggnet.data.constants import IMAGENET_MEAN, IMAGENET_STD
from vggnet.data.transforms import ImageClassification, keras_transforms
from vggnet.errors import ArchMismatch, BadCheckpointError, CheckpointMismatchError, UsageError
from vggnet.hub import VerifiedFile, load_hf_hub, normalize_digest, open_verified, read_tensors
from vggnet.models.config import GLOBAL_POOLS, HEADS, IN_CHANNELS, arch_config, check_arch
from vggnet.models.finetuned import Finetuned
from vggnet.models.layouts import from_timm, layout_of, load_keras
from vggnet.models.saved import FORMAT, Header, Saved, read_saved
from vggnet.models.sources import (
    Source,
    WeightsSource,
    check_classifier,
    classify,
    hub_arch_of,
)
from vggnet.models.state_dicts import arch_of_keys, arch_of_state, key_list, model_from_state
from vggnet.models.vgg import NUM_CLASSES_MEANS, VGG, init_module, make_layers, pretrained_cfg
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
    """A model built from a weights source, with what it needs to be used: `preset(image)`, then `model(batch)`.

    Attributes:
        model: the network with the weights loaded, on the device asked for.
        preset: the preprocessing the weights expect: a record's own, a vggnet checkpoint's, Keras' for a Keras
            file, else ImageNet's (assumed for a plain state dict, said once at WARNING).
        categories: the labels of the outputs: the record's, the checkpoint's classes, ImageNet's for a plain
            state dict with 1000 outputs; "class 0", "class 1", ... where the source's labels do not fit fc8
            (a new head). None for a record whose classifier is unusable (VGG16_Weights.IMAGENET1K_FEATURES).
        arch: the builder name the model was built with ("vgg16_bn").
        weights: what was loaded, for messages and reports: "VGG16_Weights.IMAGENET1K_V1", a path, a URL, an
            "hf-hub:" name or "random".
        source: what `sources.classify` made of the weights argument.
        info: a vggnet checkpoint's free metadata (`vggnet.save(..., **meta)`; `finetune` records mode, epoch,
            val_acc and weights there); empty for other sources.
    """

    model: VGG
    preset: ImageClassification
    categories: Sequence[str] | None
    arch: str
    weights: str
    source: Source
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str] | None:
        """`categories` as a list: the class names `vggnet.save(model, path, classes=...)` recorded, or assumed."""
        return None if self.categories is None else list(self.categories)


def load(
    weights: WeightsSource,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    head: str | None = None,
    global_pool: str | None = None,
    dropout: float | None = None,
    init_weights: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    sha256: str | None = None,
    classifier: bool = False,
) -> Loaded:
    """Build the model a weights source describes, with its preset and labels; every argument is checked before a fetch.

    Args:
        weights: None (random), a record or its name, a checkpoint file, a URL or an "hf-hub:" name (`SOURCE_RULES`).
        arch: the builder; default the source's own, else vgg16. One the source contradicts is an `ArchMismatch`.
        num_classes: fc8's width; default the source's. Another width gets a freshly initialised fc8; 0: no fc8.
        in_chans: input channels; default the source's (3 for records); a pretrained conv1_1 is adapted.
        head: "vgg", "gap" or "fc7"; default the source's.
        global_pool: "avg" or "" (no pooling, only with num_classes=0); default the source's ("avg").
        dropout: the vgg head's dropout probability; default 0.5.
        init_weights: initialise as torchvision does before the weights are assigned; default True.
        device: where the model goes ("cpu", "cuda:1"), checked against this machine's; None: the CPU.
        progress: show a progress bar on stderr while downloading.
        sha256: the digest (or its first 8+ hex digits) a file or URL must have.
        classifier: refuse, before any download, a record whose fc8 is unusable (the features-only VGG16).

    Returns:
        The model, its preset, labels, builder name, what was loaded and the checkpoint's metadata.

    Raises:
        UsageError: a bad argument, or `sha256` given with a record, which carries its own digest (exit 2 on
            the command line); all before anything is fetched.
    """
    arch = check_arch(arch) if arch is not None else None
    dev = check_device(device)
    given = {"num_classes": num_classes, "in_chans": in_chans, "head": head, "global_pool": global_pool,
             "dropout": dropout, "init_weights": init_weights}  # fmt: skip
    kwargs = _model_arguments(given)
    digest = normalize_digest(sha256) if sha256 is not None else None
    source = classify(weights, arch)
    if source.kind == "record" and digest is not None:
        raise UsageError("sha256 is for a checkpoint file or URL; a record carries its own digest")
    if classifier:
        check_classifier(source)
    return _load_source(source, arch, dev, kwargs, digest, progress)


def _model_arguments(given: dict[str, Any]) -> dict[str, Any]:
    """The arguments for `VGG` that were given (None: the source's or VGG's), checked before any download."""
    if given["num_classes"] is not None:
        check_int("num_classes", given["num_classes"], least=0, what=NUM_CLASSES_MEANS)
    if given["in_chans"] is not None:
        check_int("in_chans", given["in_chans"])
    if given["head"] is not None:
        check_choice("head", given["head"], HEADS)
    if given["global_pool"] is not None:
        check_choice("global_pool", given["global_pool"], GLOBAL_POOLS, quote=True)
    if given["dropout"] is not None:
        check_float("dropout", given["dropout"], least=0.0, most=1.0, expected="a probability between 0 and 1")
    return {k: v for k, v in given.items() if v is not None}


def _load_source(
    source: Source, arch: str | None, dev: torch.device | None, kwargs: dict[str, Any], digest: str | None,
    progress: bool,
) -> Loaded:  # fmt: skip
    """`load` once its arguments are checked: the model `source` describes."""
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
    return arch, _vggnet_layout(load_hf_hub(name, sha256=sha256, map_location=map_location))


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
    source: Source, verified: VerifiedFile, arch: str | None, device: torch.device | None, kwargs: dict[str, Any]
) -> Loaded:
    """A Keras VGG16/VGG19 .h5 file: its model (RGB input, see `formats`), Keras' preset, ImageNet's classes."""
    found, state = load_keras(verified)
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
    """A local file or a URL: a checkpoint written by `finetune` (its classes and preset), or a state dict.

    Everything is read from the one open file that was checked against the digest (`hub.open_verified`).
    """
    text = source.text
    map_location = device if device is not None else "cpu"
    with open_verified(Path(text) if source.kind == "file" else text, sha256=digest, progress=progress) as verified:
        if verified.format == "hdf5":
            return _from_keras(source, verified, arch, device, kwargs)
        saved = read_saved(verified, map_location)
        state = {} if saved is not None else _vggnet_layout(read_tensors(verified, map_location))
    if saved is not None:
        return _from_saved(saved, source, arch, device, kwargs)
    if arch is None:
        name = arch_of_state(state, text)
    else:
        name = arch
        found_arch = arch_of_keys(state)
        if found_arch is not None and found_arch != arch:
            raise ArchMismatch(text, found_arch, arch)
    model = model_from_state(name, state, device, kwargs, source=text)
    # files are assumed to expect ImageNet's preset; 1000 outputs are ImageNet's classes
    loaded = Loaded(model, ImageClassification(crop_size=224), _labels(IMAGENET_CATEGORIES, model), name, text, source)
    _say_assumed(loaded, "is a plain state dict", preset=True, labels=True)
    model.pretrained_cfg = _file_cfg(loaded, None)
    return loaded


# --- vggnet's own checkpoints (saved.py) and finetune's older ones ---------------------------------


def _from_saved(saved: Saved, source: Source, arch: str | None, device: torch.device | None,
                kwargs: dict[str, Any]) -> Loaded:  # fmt: skip
    """The model of a checkpoint in vggnet's format, with its classes and preset (assumed where it has none)."""
    header, text = saved.header, source.text
    found = header.arch or arch_of_state(saved.state, text)
    if arch is not None and arch != found:
        raise ArchMismatch(text, found, arch)
    model = _saved_model(found, header, saved.state, device, kwargs, text)
    preset = header.preset()
    labels = _labels(header.classes if header.classes is not None else IMAGENET_CATEGORIES, model)
    loaded = Loaded(model, preset or ImageClassification(crop_size=224), labels, found, text, source, header.meta)
    unnamed = header.classes is None and model.num_classes > 0
    if preset is None or unnamed:
        _say_assumed(
            loaded,
            f"records no {'preset' if preset is None else 'class names'}"
            + (" and no class names" if preset is None and unnamed else ""),
            preset=preset is None,
            labels=unnamed,
        )
    model.pretrained_cfg = _file_cfg(loaded, header.classes)
    return loaded


def _saved_model(
    arch: str, header: Header, state: dict[str, torch.Tensor], device: str | torch.device | None,
    kwargs: dict[str, Any], source: str,
) -> VGG:  # fmt: skip
    """The model (eval mode) a header and its tensors describe; `kwargs` (num_classes, in_chans, head, ...) override."""
    _check_fits(header, state, source)
    given = {"num_classes": header.num_classes, "in_chans": header.in_chans, "head": header.head,
             "global_pool": header.global_pool}  # fmt: skip
    kwargs = {**{k: v for k, v in given.items() if v is not None}, **kwargs}
    if header.backbone is None:
        return model_from_state(arch, state, device, kwargs, source=source).eval()
    return _on_backbone(arch, header.backbone, state, device, kwargs)


def _check_fits(header: Header, state: dict[str, torch.Tensor], source: str) -> None:
    """BadCheckpointError when the tensors contradict the header: fc8's inputs or outputs, the first conv's channels."""
    vgg_fc8, gap_fc8 = state.get("classifier.6.weight"), state.get("classifier.0.weight")
    # the tensors' own head: one Linear on the 512 pooled channels is "gap" (state_dicts.py reads it so too)
    gap = gap_fc8 is not None and gap_fc8.dim() == 2 and gap_fc8.shape[1] == 512 and "classifier.3.weight" not in state
    fc8 = gap_fc8 if gap else vgg_fc8
    outputs = 0 if fc8 is None or fc8.dim() != 2 else fc8.shape[0]
    problems = []
    headless = not any(k.startswith("classifier.") for k in state)  # gap with num_classes=0 has no tensors there
    if header.head is not None and (header.head == "gap") != gap and not headless:
        problems.append(f"its head is {header.head!r} but the tensors are of a {'gap' if gap else 'vgg'} head")
    named = header.num_classes if header.num_classes is not None else len(header.classes or []) or None
    if named is not None and outputs != named and not (fc8 is None and header.backbone is not None):
        problems.append(f"it names {named} outputs but fc8 has {outputs}")
    first = state.get("features.0.weight")
    if header.in_chans is not None and first is not None and first.dim() == 4 and first.shape[1] != header.in_chans:
        problems.append(f"it says in_chans {header.in_chans} but the first convolution reads {first.shape[1]}")
    if problems:
        raise BadCheckpointError(f"{source} does not hold what its header says: {'; '.join(problems)}; nothing loaded")


_ASSUMED: set[str] = set()  # the files whose missing preset or labels were already reported in this process


def _say_assumed(loaded: Loaded, what: str, *, preset: bool, labels: bool) -> None:
    """Say once per file, at WARNING, what a file that does not record them is assumed to expect."""
    if loaded.weights in _ASSUMED:
        return
    _ASSUMED.add(loaded.weights)
    p = loaded.preset
    norm = "ImageNet's mean and std" if (tuple(p.mean), tuple(p.std)) == (IMAGENET_MEAN, IMAGENET_STD) else (
        f"mean {p.mean}, std {p.std}")  # fmt: skip
    assumed = [f"ImageNet's preset (resize {p.resize_size}, crop {p.crop_size}, {norm})"] if preset else []
    names = loaded.categories or []
    if labels and names:
        assumed.append(
            "ImageNet's labels" if names is IMAGENET_CATEGORIES else f"labels {names[0]!r} ... {names[-1]!r}"
        )
    logger.warning(
        "%s %s: assuming %s, unless told otherwise (on the command line --resize, --crop, --mean and --std "
        "override the preset); save the model with vggnet.save(model, path, classes=[...], preset=...) to keep "
        "both in the file",
        loaded.weights, what, " and ".join(assumed),
    )  # fmt: skip


@dataclass(frozen=True)
class _FilePreset:
    """What `pretrained_cfg` reads off a record, for a file: its name and its preset's numbers."""

    url: str
    crop_size: int
    resize_size: int
    mean: Sequence[float]
    std: Sequence[float]
    interpolation: str


def _file_cfg(loaded: Loaded, classes: Sequence[str] | None) -> dict[str, Any]:
    """timm's `pretrained_cfg` of a file's model: its preset, and its class names as `label_names`."""
    p = loaded.preset
    cfg = pretrained_cfg(
        _FilePreset(loaded.weights, p.crop_size, p.resize_size, p.mean, p.std, p.interpolation),
        loaded.model.num_classes,
        loaded.model.head,
    )
    if classes is not None and len(classes) == loaded.model.num_classes:
        cfg["label_names"] = tuple(classes)
    return cfg


# --- checkpoints in vggnet's format: load_finetuned, and a small one's backbone -------------------


def load_finetuned(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Finetuned:
    """Load a checkpoint in vggnet's format (`vggnet.save`, `finetune`), or an older `finetune` one.

    Args:
        path: the checkpoint.
        map_location: where its tensors go.

    Returns:
        The model in eval mode, its classes and preset (assumed where the file records none), arch and info.

    Raises:
        BadCheckpointError: a file in no such format (a plain state dict, say), or a field missing or wrong.
    """
    saved = read_saved(path, map_location)
    if saved is None:
        raise BadCheckpointError(
            f"{path} is not a checkpoint written by vggnet finetune or vggnet.save (no format {FORMAT!r})"
        )
    loaded = _from_saved(saved, Source("file", str(path)), None, torch.device(map_location), {})
    model = loaded.model.eval()
    return Finetuned(model, list(loaded.categories or []), loaded.preset, loaded.arch, model.in_channels,
                     dict(loaded.info))  # fmt: skip


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
