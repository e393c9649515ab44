"""Fine-tuning: an ImageFolder reader, the training loop (one process or DDP under torchrun), checkpoints.

DATA holds `train/<class>/*.png|jpg|...` and `val/<class>/...` (or only `train/`, with `val_split`
taking a stratified, seeded share of it); the class names are the sorted folder names of `train/`,
and `val/` must have the same folders. The layout is checked before any weights are fetched; an image
that cannot be read stops the run naming it (nothing is skipped silently).

What trains is `mode` x `head`:

- head "vgg" (fc6-fc8, the default), "gap" (global average pool + one Linear(512, N)) or "fc7" (the
  vgg head, trained as a linear probe on fc7 features: "fc7" is mode "linear" spelled as a head, and
  refuses mode "full").
- mode "linear": the backbone is frozen and run once over the data with the evaluation preset (no
  augmentation, so `augment`, `hflip`, `crop_scale` are refused there); the features fc8 reads (fc7's
  4096 for vgg/fc7, the pooled 512 for gap) are kept in memory and only the last Linear trains.
- mode "full": every layer trains, with the training preset `augment` picks, one parameter group per
  block for the vgg head (`VGG.param_groups`).

SGD with momentum 0.9, `weight_decay`, `label_smoothing`, and a learning rate warming up linearly over
`warmup_epochs` then following a cosine to 0 at `epochs`. `early_stop=P` ends the run after P epochs
without a better validation accuracy. A training loss that is NaN, or more than 3x the first epoch's
(and above chance), raises `Diverged` advising a lower `lr`, instead of training on.

Each run writes `OUT/last.pth` (after every epoch, with the optimizer, schedule, epoch and RNG states:
`resume=True` continues it, with the same history as an uninterrupted run), `OUT/best.pth` (the best
validation accuracy) and `OUT/history.jsonl` (one JSON line per epoch: train/val loss and accuracy,
lr, seconds, images/s); `plot=PATH` draws the curves as a PNG with Pillow. An OUT that already holds
a run is refused unless `resume` or `overwrite`.

Feedback from Python: `on_epoch(stats)` is called on rank 0 after every epoch with its `EpochStats`, and
`FinetuneResult.history` holds them all; the module also logs them at INFO (the CLI shows that on
stderr). Logging alone would be silent for Python users who configure none.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set, WORLD_SIZE > 1) the process group is initialised
(NCCL on CUDA, gloo on CPU), each rank reads its shard through a `DistributedSampler`, rank 0
downloads the weights while the others wait at a barrier and then load them from the cache, and only
rank 0 logs, shows progress bars and writes checkpoints. The process group stays initialised after
`finetune` returns (a later call reuses it); `torch.distributed.destroy_process_group()` ends it.
`_bn` models get SyncBatchNorm on CUDA (PyTorch's SyncBatchNorm has no CPU kernel; on CPU DDP
broadcasts rank 0's BatchNorm statistics at every step instead). On CUDA the forward runs under
bf16 autocast and in channels_last.

The checkpoints are dicts of tensors, strings, numbers and lists, so `torch.load(..., weights_only=True)`
reads them: "format", "arch", "in_chans", "head", "classes", "preprocessing" (crop_size, resize_size,
mean, std, interpolation), "mode", "epoch", "val_acc", "weights" (the starting point) and
"state_dict". In mode "linear" on weights that can be verified (a record, a file, a URL) the state
dict holds only the trained Linear, and "backbone" the name and SHA-256 of those weights: kilobytes to
megabytes instead of 491 MiB, loaded back (and verified) by `load_finetuned`, `checkpoint.load` and
`vggnet predict` as a full one is.

The settings of a run are one frozen `FinetuneConfig`, checked once when it is made; `finetune(...)` is
`run(FinetuneConfig(...))`. A new setting is a field there (checked in `__post_init__`), an option of
`vggnet finetune` (a test compares the two), and is read from `session.config` where it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from .checkpoint import (
    FORMAT,
    WEIGHT_FILE_SUFFIXES,
    Finetuned,
    Source,
    WeightsSource,
    backbone_identity,
    check_classifier,
    check_device,
    classify,
    load,
    load_finetuned,
)
from .checkpoint import read_finetuned as _read_finetuned  # noqa: F401  # the old private name, kept importable
from .checks import check_int
from .config import IN_CHANNELS, MAX_SIZE, MIN_SIZE, check_arch
from .decode import gray_image, load_image
from .hub import fetch
from .model import HEADS, VGG
from .transforms import ImageClassification, TrainClassification

__all__ = [
    "AUGMENTS",
    "FORMAT",
    "HEADS",
    "WEIGHT_FILE_SUFFIXES",
    "Diverged",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "Finetuned",
    "ImageFolder",
    "finetune",
    "load_finetuned",
    "plot_history",
    "read_history",
    "run",
]

logger = logging.getLogger(__name__)

# FORMAT, Finetuned, load_finetuned and _read_finetuned live in checkpoint.py (the reading side of
# fine-tuned checkpoints) and are imported here for compatibility, as is WEIGHT_FILE_SUFFIXES.
CHECKPOINT_NAME = "best.pth"
LAST_NAME = "last.pth"
HISTORY_NAME = "history.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MODES = ("linear", "full")
AUGMENTS = ("none", "light", "standard")
CROP_SCALES = {"light": (0.6, 1.0), "standard": (0.08, 1.0)}  # random-resized-crop area shares
DEFAULT_LR = {"linear": 0.05, "full": 0.001}
DIVERGED = 3.0  # a training loss above this many times the first epoch's (and above chance) is a divergence
Mode = Literal["linear", "full"]
Head = Literal["vgg", "gap", "fc7"]
Augment = Literal["none", "light", "standard"]


# --- data ------------------------------------------------------------------------------------------


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """`root/<class>/<image>` read with Pillow; items are (transform(image), class index).

    `classes` fixes the class order (and which folders must exist); by default the sorted folder names.
    A class without images is a ValueError naming it. An image Pillow cannot read raises naming its path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Any], torch.Tensor] | None = None,
        classes: Sequence[str] | None = None,
        gray: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder (expected one folder per class inside)")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.classes = list(classes) if classes is not None else found
        if sorted(self.classes) != found:
            raise ValueError(f"{self.root} has the class folders {found}, expected {sorted(self.classes)}")
        if not self.classes:
            raise ValueError(f"{self.root} has no class folders; expected {self.root}/<class>/<image files>")
        self.samples = [
            (path, index)
            for index, name in enumerate(self.classes)
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        ]
        empty = [name for i, name in enumerate(self.classes) if not any(t == i for _, t in self.samples)]
        if empty:
            raise ValueError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root} for the classes {empty}; "
                "add images or remove the empty folders"
            )
        self.transform = transform
        self.gray = gray

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        try:
            image = load_image(path)
            if self.gray:
                image = gray_image(image)  # the conversion a gray preset applies at prediction time
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
            raise ValueError(f"cannot read the image {path}: {err}; remove or replace it") from err
        if self.transform is None:
            raise ValueError("this ImageFolder has no transform; pass one, e.g. ImageClassification(crop_size=224)")
        return self.transform(image), target

    def targets(self) -> list[int]:
        """The class index of every image, in order."""
        return [t for _, t in self.samples]

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
        """(rest, held out): `fraction` of each class's images held out (at least one), chosen with `seed`."""
        if not 0 < fraction < 1:
            raise ValueError(f"the validation share must be between 0 and 1, e.g. 0.2, got {fraction!r}")
        generator = torch.Generator().manual_seed(seed)
        held: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            own = [s for s in self.samples if s[1] == index]
            if len(own) < 2:
                raise ValueError(f"{self.root / name} has {len(own)} image(s): a split needs at least 2 a class")
            order = torch.randperm(len(own), generator=generator).tolist()
            n = min(len(own) - 1, max(1, round(len(own) * fraction)))
            held += [own[i] for i in sorted(order[:n])]
        chosen = set(held)
        return self._with([s for s in self.samples if s not in chosen]), self._with(held)

    def _with(self, samples: list[tuple[Path, int]]) -> ImageFolder:
        subset = object.__new__(ImageFolder)
        subset.__dict__.update(self.__dict__)
        subset.samples = samples
        return subset

    def with_transform(self, transform: Callable[[Any], torch.Tensor]) -> ImageFolder:
        """The same images through another transform."""
        copy = self._with(self.samples)
        copy.transform = transform
        return copy


# --- results and checkpoints -----------------------------------------------------------------------


@dataclass
class EpochStats:
    """One epoch's figures (accuracies in percent; images/s over the training pass)."""

    epoch: int
    train_loss: float
    val_acc: float  # percent
    seconds: float
    train_acc: float = 0.0
    val_loss: float = 0.0
    lr: float = 0.0
    images_per_s: float = 0.0

    def line(self, epochs: int) -> str:
        """The one-line summary the CLI shows on stderr."""
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {self.train_acc:.2f}%, "
            f"val loss {self.val_loss:.4f} acc {self.val_acc:.2f}%, lr {self.lr:.3g}, {self.seconds:.1f} s, "
            f"{self.images_per_s:.0f} images/s"
        )


@dataclass
class FinetuneResult:
    """What `finetune` returns on every rank (only rank 0 wrote `checkpoint`)."""

    model: VGG  # the trained network (not DDP-wrapped), as after the last epoch
    classes: list[str]
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    checkpoint: Path | None = None
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1
    last: Path | None = None
    stopped_early: bool = False


class Diverged(RuntimeError):
    """The training loss went NaN or far above its start: the learning rate is too high."""


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_history(path: str | os.PathLike[str]) -> list[EpochStats]:
    """The epochs of a `history.jsonl` (or of the run folder holding one)."""
    path = Path(path)
    path = path / HISTORY_NAME if path.is_dir() else path
    return [EpochStats(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def plot_history(history: Sequence[EpochStats], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw loss and accuracy (train and val) per epoch as a PNG with Pillow; returns the path."""
    from PIL import Image, ImageDraw  # lazy: Pillow is needed only to draw

    width, height, margin = 900, 380, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), title or f"{len(history)} epochs", fill="black")
    panels = (
        ("loss", [(s.train_loss, s.val_loss) for s in history]),
        ("accuracy %", [(s.train_acc, s.val_acc) for s in history]),
    )
    colours = ("#1f77b4", "#d62728")  # train blue, val red
    panel_w = (width - 3 * margin) // 2
    for k, (name, pairs) in enumerate(panels):
        left, top, bottom = margin + k * (panel_w + margin), 30, height - margin
        right = left + panel_w
        draw.rectangle((left, top, right, bottom), outline="black")
        values = [v for pair in pairs for v in pair if math.isfinite(v)] or [0.0, 1.0]
        low, high = (0.0, 100.0) if name.startswith("acc") else (min(0.0, min(values)), max(values) or 1.0)
        for tick in range(5):
            value = low + (high - low) * tick / 4
            y = bottom - (bottom - top) * tick / 4
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((left - 44, y - 6), f"{value:.3g}", fill="black")
        draw.text((left + 4, bottom + 8), f"{name}: train (blue), val (red) per epoch", fill="black")
        n = max(len(pairs) - 1, 1)
        for series, colour in enumerate(colours):
            points = [
                (left + (right - left) * i / n, bottom - (bottom - top) * (pair[series] - low) / (high - low or 1.0))
                for i, pair in enumerate(pairs)
                if math.isfinite(pair[series])
            ]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    out = Path(path)
    image.save(out)
    return out


# --- distributed -----------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over ranks (float64 on the process group's device)."""
        if not self.on:
            return list(values)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # Left initialised for the rest of the program: re-initialising under torchrun's store hangs,
        # so a second `finetune` call reuses it. The command line destroys it before exiting.
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local_rank)


# --- the settings of a run ------------------------------------------------------------------------


def _check_float(name: str, value: object, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of one run, all checked here, before anything is built, downloaded or written.

    `weights`: anything `checkpoint.load` takes (a record name such as "DEFAULT", an enum member, a
    `Weights` record, a state dict or `finetune` checkpoint file, a URL, None or "none" for random);
    the preprocessing of a record or a fine-tuned checkpoint is kept, files and URLs get ImageNet's.
    `lr`: default 0.05 for "linear", 0.001 for "full". `device`: default CUDA when available (under
    torchrun, cuda:LOCAL_RANK). `amp`: bf16 autocast, default on for CUDA only. `in_chans`: 3, or 1 to
    read the images as gray (the first conv is adapted, the mean and std averaged). `batch_size` is per
    process. `augment` (mode "full" only): "none" (the evaluation preset), "light" (random resized crop
    of 60-100% of the area, flip) or "standard" (8-100%, flip; the default); `hflip` and `crop_scale`
    override its flip and crop area. `early_stop`: patience in epochs on the validation accuracy.
    `val_split`: the share of each class held out for validation when DATA has no val/. `on_epoch` is
    called with each epoch's `EpochStats` on rank 0 (Python only; the CLI prints the same line).
    See the module docstring for `head`, `resume`, `overwrite` and `plot`.
    """

    data: Path
    arch: str = "vgg16"
    weights: WeightsSource = "DEFAULT"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    mode: Mode = "linear"
    head: Head = "vgg"
    image_size: int = 224
    out: Path = Path("finetune-out")
    device: str | torch.device | None = None
    workers: int = 0
    amp: bool | None = None
    in_chans: int = IN_CHANNELS
    progress: bool = True
    seed: int = 0
    augment: Augment | None = None
    hflip: bool | None = None
    crop_scale: tuple[float, float] | None = None
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    early_stop: int | None = None
    val_split: float | None = None
    resume: bool = False
    overwrite: bool = False
    plot: Path | None = None
    on_epoch: Callable[[EpochStats], object] | None = field(default=None, repr=False, compare=False)
    source: Source = field(init=False, repr=False, compare=False)  # what `weights` is, decided once

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "fc7" and self.mode != "linear":
            raise ValueError(
                "head 'fc7' is a linear probe on fc7 features (only fc8 trains), which contradicts mode "
                f"{self.mode!r}; use head 'vgg' to train every layer of the vgg head, or mode 'linear'"
            )
        if self.mode == "linear":
            given = [k for k in ("augment", "hflip", "crop_scale") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"mode 'linear' computes the features once, without augmentation, so {', '.join(given)} "
                    "cannot apply; use mode 'full' or leave them out"
                )
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.crop_scale is not None:
            scale = tuple(self.crop_scale)
            if self.augment == "none":
                raise ValueError("augment 'none' makes no random crop; drop crop_scale or use augment 'light'")
            if (
                len(scale) != 2
                or not all(isinstance(v, (int, float)) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1
            ):
                raise ValueError(
                    f"crop_scale must be (MIN, MAX) with 0 < MIN <= MAX <= 1, e.g. (0.6, 1.0), got {self.crop_scale!r}"
                )
            object.__setattr__(self, "crop_scale", (float(scale[0]), float(scale[1])))
        if self.in_chans not in (1, IN_CHANNELS):
            raise ValueError(f"finetune reads RGB or gray images: in_chans must be 1 or 3, got {self.in_chans}")
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("workers", self.workers, least=0)
        check_int("warmup_epochs", self.warmup_epochs, least=0)
        check_int("seed", self.seed, least=0)
        if self.early_stop is not None:
            check_int("early_stop", self.early_stop)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, "in [0, 1), e.g. 0.1")
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf, "a number >= 0, e.g. 5e-4")
        if self.val_split is not None:
            _check_float("val_split", self.val_split, 1e-9, 1.0, "between 0 and 1, e.g. 0.2")
        if self.resume and self.overwrite:
            raise ValueError("resume continues the run in out and overwrite replaces it: pass one of them")
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
            raise ValueError(
                f"image_size must be an integer of at least {MIN_SIZE} (VGG's five 2x2 max-pools need "
                f"{MIN_SIZE}x{MIN_SIZE} pixels), got {size!r}; 224 is what ImageNet weights were trained at"
            )
        if size > MAX_SIZE:  # checked here too, before any weights are fetched
            raise ValueError(f"image_size must be at most {MAX_SIZE} (the presets' bound), got {size}")
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
            raise ValueError(
                f"lr must be a positive number, got {lr!r}; None uses {DEFAULT_LR[self.mode]} for mode {self.mode!r}"
            )
        object.__setattr__(self, "arch", check_arch(self.arch))
        object.__setattr__(self, "source", classify(self.weights, self.arch))
        if self.head != "gap":
            check_classifier(self.source)  # fc8 is trained on fc7: the features-only checkpoint cannot start a run
        check_device(self.device)
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.plot is not None:
            object.__setattr__(self, "plot", Path(self.plot))

    @property
    def rate(self) -> float:
        """The learning rate: `lr`, or the mode's default."""
        return DEFAULT_LR[self.mode] if self.lr is None else float(self.lr)

    @property
    def model_head(self) -> str:
        """The head the network is built with ("fc7" is the vgg head)."""
        return "gap" if self.head == "gap" else "vgg"

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        names = ("arch", "mode", "head", "image_size", "in_chans", "batch_size", "seed", "augment", "hflip",
                 "crop_scale", "label_smoothing", "weight_decay", "warmup_epochs", "val_split")  # fmt: skip
        values = {name: getattr(self, name) for name in names}
        values["crop_scale"] = list(self.crop_scale) if self.crop_scale is not None else None
        return {**values, "lr": self.rate, "weights": self.source.text}


def finetune(
    data: str | os.PathLike[str],
    *,
    arch: str = "vgg16",
    weights: WeightsSource = "DEFAULT",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float | None = None,
    mode: Mode = "linear",
    head: Head = "vgg",
    image_size: int = 224,
    out: str | os.PathLike[str] = "finetune-out",
    device: str | torch.device | None = None,
    workers: int = 0,
    amp: bool | None = None,
    in_chans: int = IN_CHANNELS,
    progress: bool = True,
    seed: int = 0,
    **recipe: Any,
) -> FinetuneResult:
    """Fine-tune `arch` on DATA (see the module docstring and `FinetuneConfig` for the arguments).

    Every other `FinetuneConfig` field (augment, hflip, crop_scale, label_smoothing, weight_decay,
    warmup_epochs, early_stop, val_split, resume, overwrite, plot, on_epoch) is a keyword here too.
    Returns the history and the trained model. `weights` may be a `pathlib.Path`, e.g. an earlier
    `FinetuneResult.checkpoint`, or `vggnet.VGG16_Weights.DEFAULT`.
    """
    known = {f.name for f in dataclasses.fields(FinetuneConfig) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise TypeError(f"finetune() got unexpected keyword arguments {unknown}; valid: {', '.join(sorted(known))}")
    config = FinetuneConfig(
        Path(data), arch=arch, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, mode=mode, head=head,
        image_size=image_size, out=Path(out), device=device, workers=workers, amp=amp, in_chans=in_chans,
        progress=progress, seed=seed, **recipe,
    )  # fmt: skip
    return run(config)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What every part of a run shares: its settings, the process group, the device, the loaders."""

    config: FinetuneConfig
    ctx: _Dist
    device: torch.device
    amp: bool
    loaders: _Loaders

    @property
    def progress(self) -> bool:
        return self.config.progress


def run(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune with `config`'s settings (every rank under torchrun); see `finetune`."""
    started = time.perf_counter()
    dev = check_device(config.device) or _default_device()
    ctx = _init_distributed(dev)
    if dev.type == "cuda" and ctx.on:
        dev = torch.device("cuda", ctx.local_rank)
    amp = dev.type == "cuda" if config.amp is None else config.amp
    session = _Session(config, ctx, dev, amp, _Loaders(ctx, config.batch_size, config.workers, dev, config.seed))
    return _finetune(session, started)


def _datasets(config: FinetuneConfig) -> tuple[ImageFolder, ImageFolder]:
    """DATA's train and validation images (no transform yet): the layout checked before any weights are read."""
    data = config.data
    if not (data / "train").is_dir():
        raise FileNotFoundError(
            f"{data}/train: no such folder, so no class folders; expected {data}/train/<class>/<images> and "
            f"{data}/val/<class>/<images> "
            "(or only train/ with val_split=0.2 / --val-split 0.2)"
        )
    train = ImageFolder(data / "train", gray=config.in_chans == 1)
    has_val = (data / "val").is_dir()
    if config.val_split is not None:
        if has_val:
            raise ValueError(f"{data}/val exists and val_split={config.val_split} was given; drop one of them")
        return train.split(config.val_split, config.seed)
    if not has_val:
        raise FileNotFoundError(
            f"{data}/val: no such folder; add {data}/val/<class>/<images> or hold out a share of train/ with "
            "val_split=0.2 (--val-split 0.2)"
        )
    return train, ImageFolder(data / "val", classes=train.classes, gray=config.in_chans == 1)


def _previous_run(config: FinetuneConfig) -> dict[str, Any] | None:
    """The training state in OUT/last.pth to resume; refuses to overwrite a run unless asked."""
    out = config.out
    files = [out / name for name in (LAST_NAME, CHECKPOINT_NAME, HISTORY_NAME) if (out / name).exists()]
    if config.overwrite:
        for path in files:
            path.unlink()
        return None
    last = out / LAST_NAME
    if config.resume:
        if not last.is_file():
            raise FileNotFoundError(f"nothing to resume: {last} does not exist; drop resume (--resume) to start a run")
        state: dict[str, Any] = torch.load(last, map_location="cpu", weights_only=True)
        train = state.get("train")
        if not isinstance(train, dict):
            raise ValueError(f"{last} has no training state to resume from")
        different = {k: (v, train["recipe"].get(k)) for k, v in config.recipe().items() if train["recipe"].get(k) != v}
        if different:
            listed = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (new, old) in sorted(different.items()))
            raise ValueError(f"{out} holds a run with other settings ({listed}); resume it with the same ones")
        if train["epoch"] >= config.epochs or train.get("stopped_early"):
            raise ValueError(
                f"{out} holds a finished run ({train['epoch']} epochs); pass more epochs to continue it, or "
                "overwrite (--overwrite) to start again"
            )
        return state
    if files:
        finished = ""
        if last.is_file():
            train = torch.load(last, map_location="cpu", weights_only=True).get("train") or {}
            finished = f" ({'finished' if train.get('finished') else 'stopped'} after epoch {train.get('epoch')})"
        raise FileExistsError(
            f"{out} already holds a run{finished}: {', '.join(p.name for p in files)}; pass resume (--resume) "
            "to continue it, overwrite (--overwrite) to replace it, or another out (--out)"
        )
    return None


def _finetune(session: _Session, started: float) -> FinetuneResult:
    config, ctx, device = session.config, session.ctx, session.device
    in_chans, image_size = config.in_chans, config.image_size
    torch.manual_seed(config.seed)  # the same fresh fc8 on every rank (DDP broadcasts rank 0's anyway)
    train_files, val_files = _datasets(config)  # before any weights are fetched
    classes = train_files.classes
    previous = _previous_run(config) if ctx.main else None  # refusals and --overwrite's deletions, once

    # Rank 0 fetches (and caches) the weights first; the others then find them in the cache.
    if not ctx.main:
        ctx.barrier()
        if config.resume:
            previous = torch.load(config.out / LAST_NAME, map_location="cpu", weights_only=True)
    start = load(
        config.weights, arch=config.arch, num_classes=len(classes), in_chans=in_chans,
        progress=config.progress and ctx.main, classifier=config.model_head != "gap", head=config.model_head,
    )  # fmt: skip
    if ctx.main:
        ctx.barrier()
    model = start.model.to(device)
    mean, std, interpolation = tuple(start.preset.mean), tuple(start.preset.std), start.preset.interpolation
    if in_chans == 1 and len(mean) == IN_CHANNELS:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    eval_preset = ImageClassification(crop_size=image_size, mean=mean, std=std, interpolation=interpolation)
    eval_preset = eval_preset.resized(image_size)  # the shorter side to image_size * 256 / 224 first
    preprocessing: dict[str, Any] = {
        "crop_size": eval_preset.crop_size, "resize_size": eval_preset.resize_size, "mean": list(mean),
        "std": list(std), "interpolation": interpolation,
    }  # fmt: skip
    train_eval, val = train_files.with_transform(eval_preset), val_files.with_transform(eval_preset)
    weights = config.source.text  # as given ("DEFAULT", a path, a URL, "None"): logged and kept in the checkpoint
    if ctx.main:
        logger.info(
            "fine-tuning %s (%s, head %s, %s) on %d classes: %d training and %d validation images, "
            "%d process(es) on %s",
            config.arch, config.mode, config.head, weights, len(classes), len(train_eval), len(val), ctx.world, device,
        )  # fmt: skip

    meta: dict[str, Any] = {
        "format": FORMAT, "arch": config.arch, "in_chans": in_chans, "head": config.model_head, "classes": classes,
        "preprocessing": preprocessing, "mode": config.mode, "weights": str(weights),
    }  # fmt: skip
    small = config.mode == "linear" and config.source.kind != "random"
    if small and ctx.main:
        meta["backbone"] = backbone_identity(config.source, _source_file(config.source))
    result = FinetuneResult(model=model, classes=classes, rank=ctx.rank, world_size=ctx.world)
    if ctx.main:
        config.out.mkdir(parents=True, exist_ok=True)

    if config.mode == "linear":
        trainer: _Trainer = _Linear(session, model, train_eval, val)
    else:
        trainer = _Full(session, model, train_files.with_transform(_train_preset(config, eval_preset)), val)
    first, bad_epochs = 1, 0
    if previous is not None:
        first, bad_epochs = _restore(previous, trainer, result)
    chance = math.log(max(len(classes), 2))
    trained = _trained_names(model) if small else None
    for epoch in range(first, config.epochs + 1):
        lr = trainer.optimizer.param_groups[-1]["lr"]
        stats = trainer.epoch(epoch)
        stats.lr = lr
        if not math.isfinite(stats.train_loss) or stats.train_loss > DIVERGED * max(chance, 1.0):
            raise Diverged(
                f"training diverged at epoch {epoch}: train loss {stats.train_loss:.4g}, where chance is "
                f"{chance:.3g}; the learning rate {config.rate:g} is too high: lower it (--lr {config.rate / 10:g}), "
                "or warm up (--warmup-epochs 2)"
            )
        result.history.append(stats)
        improved = stats.val_acc > result.best_val_acc
        bad_epochs = 0 if improved else bad_epochs + 1
        stopped = config.early_stop is not None and bad_epochs >= config.early_stop
        if improved:
            result.best_epoch, result.best_val_acc = epoch, stats.val_acc
        if ctx.main:
            state = _state(model, trained)
            entry = {**meta, "epoch": epoch, "val_acc": stats.val_acc, "state_dict": state}
            if improved:
                result.checkpoint = config.out / CHECKPOINT_NAME
                save_checkpoint(entry, result.checkpoint)
            train_state = {
                "epoch": epoch, "recipe": config.recipe(), "optimizer": trainer.optimizer.state_dict(),
                "schedule": trainer.schedule.state_dict(), "rng": torch.get_rng_state(),
                "generator": trainer.generator.get_state(), "history": [dataclasses.asdict(s) for s in result.history],
                "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc, "bad_epochs": bad_epochs,
                "stopped_early": stopped, "finished": stopped or epoch == config.epochs,
            }  # fmt: skip
            result.last = config.out / LAST_NAME
            save_checkpoint({**entry, "train": train_state}, result.last)
            _write_text(
                config.out / HISTORY_NAME, "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in result.history)
            )
            logger.info("%s", stats.line(config.epochs))
            if config.on_epoch is not None:
                config.on_epoch(stats)
        if stopped:
            result.stopped_early = True
            if ctx.main:
                logger.info("no better val accuracy for %d epochs: stopping early", bad_epochs)
            break
    if result.checkpoint is None and (config.out / CHECKPOINT_NAME).is_file():
        result.checkpoint = config.out / CHECKPOINT_NAME
    result.seconds = time.perf_counter() - started
    if ctx.main:
        if config.plot is not None:
            plot_history(result.history, config.plot, f"{config.arch} {config.mode} head {config.head}")
        logger.info(
            "best val accuracy %.2f%% at epoch %d; checkpoint %s", result.best_val_acc, result.best_epoch,
            result.checkpoint,
        )  # fmt: skip
    return result


def _source_file(source: Source) -> Path | None:
    """The local file a file or URL source was read from (the hub's cached copy for http)."""
    if source.kind == "file":
        return Path(source.text).resolve()
    if source.kind == "url":
        if source.text.lower().startswith("file:"):
            return Path(unquote(urlsplit(source.text).path))
        return fetch(source.text, progress=False)  # already cached by the load
    return None


def _trained_names(model: VGG) -> set[str]:
    fc = model.get_classifier()
    prefix = next(name for name, m in model.named_modules() if m is fc)
    return {f"{prefix}.{k}" for k in fc.state_dict()}


def _state(model: VGG, names: set[str] | None) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict (only `names`, when given: what was trained on a named backbone)."""
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if names is None or k in names
    }


def _restore(previous: dict[str, Any], trainer: _Trainer, result: FinetuneResult) -> tuple[int, int]:
    """Put last.pth's model, optimizer, schedule and RNG states back; returns (first epoch, bad epochs)."""
    train = previous["train"]
    state = trainer.model.state_dict()
    state.update({k: v.to(state[k].device) for k, v in previous["state_dict"].items()})
    trainer.model.load_state_dict(state)
    trainer.optimizer.load_state_dict(train["optimizer"])
    trainer.schedule.load_state_dict(train["schedule"])
    torch.set_rng_state(train["rng"])
    trainer.generator.set_state(train["generator"])
    result.history = [EpochStats(**s) for s in train["history"]]
    result.best_epoch, result.best_val_acc = int(train["best_epoch"]), float(train["best_val_acc"])
    logger.info("resuming after epoch %d", train["epoch"])
    return int(train["epoch"]) + 1, int(train["bad_epochs"])


def _train_preset(config: FinetuneConfig, eval_preset: ImageClassification) -> nn.Module:
    augment = config.augment or "standard"
    hflip = config.hflip if config.hflip is not None else augment != "none"
    if augment == "none" and not hflip:
        return eval_preset
    scale = config.crop_scale or CROP_SCALES.get(augment)
    mean, std = eval_preset.mean, eval_preset.std
    if scale is None:  # "none" with a flip: the evaluation crop, flipped half the time
        return nn.Sequential(_Flip(), eval_preset)
    return TrainClassification(
        crop_size=config.image_size, mean=mean, std=std, interpolation=eval_preset.interpolation,
        hflip_prob=0.5 if hflip else 0.0, scale=scale,
    )  # fmt: skip


class _Flip(nn.Module):
    """A PIL image mirrored left-right with probability 1/2 (torch's generator)."""

    def forward(self, img: Any) -> Any:
        from PIL import Image  # lazy: Pillow is needed only to read images

        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1).item() < 0.5 else img


def _schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per epoch: linear warm-up over `warmup_epochs`, then a cosine from lr to 0 at `epochs`."""
    warmup, epochs = config.warmup_epochs, config.epochs

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(epochs - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _Loaders:
    ctx: _Dist
    batch_size: int
    workers: int
    device: torch.device
    seed: int

    def train(
        self, dataset: ImageFolder, shuffle: bool, generator: torch.Generator
    ) -> tuple[DataLoader[Any], DistributedSampler[Any] | None]:
        """Every rank gets the same number of batches (DistributedSampler pads by repeating a few images)."""
        sampler: DistributedSampler[Any] | None = None
        if self.ctx.on:
            sampler = DistributedSampler(dataset, self.ctx.world, self.ctx.rank, shuffle=shuffle, seed=self.seed)
        loader = DataLoader(
            dataset, self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler, generator=generator,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return loader, sampler

    def val(self, dataset: ImageFolder) -> DataLoader[Any]:
        """Rank r reads images r, r + world, ...: no padding, so the summed counts are exact."""
        shard = Subset(dataset, list(range(self.ctx.rank, len(dataset), self.ctx.world)))
        return DataLoader(shard, self.batch_size, num_workers=self.workers, pin_memory=self.device.type == "cuda")


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _bar(iterable: Any, ctx: _Dist, progress: bool, desc: str) -> Any:
    # disable=None: bars only on a terminal, as hub's download bars
    shown = None if progress and ctx.main else True
    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, disable=shown, dynamic_ncols=True)


def _train_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device,
    amp: bool, smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One SGD step on a batch, shared by both modes; returns its summed loss and correct count (on the device)."""
    with _autocast(device, amp):
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    optimizer.step()
    return loss.detach().float() * len(y), (logits.detach().argmax(1) == y).sum()


class _Trainer:
    """What a mode provides the loop: the model, optimizer, schedule, the generator to save, one epoch."""

    model: VGG
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator

    def epoch(self, epoch: int) -> EpochStats:
        raise NotImplementedError


def _stats(
    ctx: _Dist, epoch: int, train: Sequence[float], val: Sequence[float], seconds: float, train_seconds: float
) -> EpochStats:
    """EpochStats from this rank's (loss sum, correct, count) of train and val, summed over the ranks."""
    loss, correct, n, vloss, vcorrect, vn = ctx.sum(*train, *val)
    n, vn = max(n, 1), max(vn, 1)
    return EpochStats(
        epoch=epoch, train_loss=loss / n, val_acc=100.0 * vcorrect / vn, seconds=seconds,
        train_acc=100.0 * correct / n, val_loss=vloss / vn, images_per_s=n / max(train_seconds, 1e-9),
    )  # fmt: skip


class _Linear(_Trainer):
    """Backbone once over train and val (this rank's shard), then the last Linear on the cached features."""

    def __init__(self, session: _Session, model: VGG, train: ImageFolder, val: ImageFolder) -> None:
        ctx, device, amp, progress = session.ctx, session.device, session.amp, session.progress
        self.session, self.model = session, model
        tic = time.perf_counter()
        if model.head == "gap":
            model.requires_grad_(False)
            model.get_classifier().requires_grad_(True)
        else:
            model.freeze(upto="fc8")
        model.eval()
        loader, _ = session.loaders.train(train, False, torch.Generator().manual_seed(session.config.seed))
        self.train_x, self.train_y = _features(
            model, loader, device, amp, _bar(loader, ctx, progress, "features train")
        )
        val_loader = session.loaders.val(val)
        self.val_x, self.val_y = _features(
            model, val_loader, device, amp, _bar(val_loader, ctx, progress, "features val")
        )
        if ctx.main:
            logger.info(
                "cached the features of %d + %d images in %.1f s", len(self.train_x), len(self.val_x),
                time.perf_counter() - tic,
            )  # fmt: skip
        self.fc = model.get_classifier()
        self.net: nn.Module = DistributedDataParallel(self.fc) if ctx.on else self.fc
        config = session.config
        self.optimizer = torch.optim.SGD(
            self.fc.parameters(), lr=config.rate, momentum=0.9, weight_decay=config.weight_decay
        )
        self.schedule = _schedule(self.optimizer, config)
        self.generator = torch.Generator().manual_seed(config.seed + ctx.rank)

    def epoch(self, epoch: int) -> EpochStats:
        session, device = self.session, self.session.device
        tic = time.perf_counter()
        order = torch.randperm(len(self.train_x), generator=self.generator).to(device)
        summed, correct = torch.zeros((), device=device), torch.zeros((), device=device)  # no host sync per step
        for batch in torch.split(order, session.loaders.batch_size):  # every rank has the same number of batches
            # the features are float32 already: the head trains without autocast
            loss, right = _train_step(
                self.net, self.optimizer, self.train_x[batch], self.train_y[batch], device, False,
                session.config.label_smoothing,
            )  # fmt: skip
            summed += loss
            correct += right
        self.schedule.step()
        train_seconds = time.perf_counter() - tic
        with torch.no_grad():
            logits = self.fc(self.val_x)
            vloss = F.cross_entropy(logits, self.val_y, reduction="sum").item() if len(self.val_x) else 0.0
            vcorrect = (logits.argmax(1) == self.val_y).sum().item() if len(self.val_x) else 0
        figures = (summed.item(), correct.item(), len(order)), (vloss, vcorrect, len(self.val_x))
        return _stats(session.ctx, epoch, *figures, time.perf_counter() - tic, train_seconds)


@torch.no_grad()
def _features(
    model: VGG, loader: DataLoader[Any], device: torch.device, amp: bool, bar: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 features the last Linear reads ((N, 4096) fc7, or (N, 512) for gap) and (N,) labels."""
    feats, labels = [], []
    for x, y in bar:
        with _autocast(device, amp):
            f = model.forward_head(model.forward_features(_to(x, device)), pre_logits=True)
        feats.append(f.float())
        labels.append(y.to(device))
    if not feats:
        return torch.empty(0, model.get_classifier().in_features, device=device), torch.empty(
            0, dtype=torch.long, device=device
        )
    return torch.cat(feats), torch.cat(labels)


class _Full(_Trainer):
    """Every layer trains on augmented images; DDP averages the gradients over the ranks."""

    def __init__(self, session: _Session, model: VGG, train: ImageFolder, val: ImageFolder) -> None:
        ctx, device, config = session.ctx, session.device, session.config
        self.session, self.model = session, model
        model.unfreeze()
        net: nn.Module = model
        if ctx.on and device.type == "cuda" and arch_has_bn(model):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # untyped in torch
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        if ctx.on:
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = net
        lr = config.rate
        groups = model.param_groups(lr, weight_decay=config.weight_decay)
        self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
        self.schedule = _schedule(self.optimizer, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.train_loader, self.sampler = session.loaders.train(train, True, self.generator)
        self.val_loader = session.loaders.val(val)

    def epoch(self, epoch: int) -> EpochStats:
        session, device, amp, ctx = self.session, self.session.device, self.session.amp, self.session.ctx
        epochs = session.config.epochs
        tic = time.perf_counter()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.net.train()
        summed, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for x, y in _bar(self.train_loader, ctx, session.progress, f"epoch {epoch}/{epochs}"):
            x, y = _to(x, device), y.to(device, non_blocking=True)
            loss, right = _train_step(self.net, self.optimizer, x, y, device, amp, session.config.label_smoothing)
            summed += loss
            correct += right
            count += len(y)
        self.schedule.step()
        train_seconds = time.perf_counter() - tic
        self.model.eval()
        vloss, vcorrect, seen = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self.val_loader:
                with _autocast(device, amp):
                    logits = self.model(_to(x, device)).float()
                y = y.to(logits.device)
                vloss += F.cross_entropy(logits, y, reduction="sum").item()
                vcorrect += int((logits.argmax(1) == y).sum())
                seen += len(y)
        figures = (summed.item(), correct.item(), count), (vloss, vcorrect, seen)
        return _stats(ctx, epoch, *figures, time.perf_counter() - tic, train_seconds)


def arch_has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
