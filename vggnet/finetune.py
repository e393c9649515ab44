"""Fine-tuning: an ImageFolder reader, the training loop (one process or DDP under torchrun), checkpoints.

DATA holds `train/<class>/*.png|jpg|...` and `val/<class>/...`; the class names are the sorted
folder names of `train/`, and `val/` must have the same folders.

Two modes:

- "linear": the backbone is frozen (`freeze(upto="fc8")`) and run once over the data with the
  evaluation preset (no augmentation); the fc7 features (`forward_head(pre_logits=True)`) are kept
  in memory and only fc8 is trained on them, so every epoch after the first costs almost nothing.
- "full": every layer trains, with the training preset (random resized crop, horizontal flip) and
  one parameter group per block (`VGG.param_groups`).

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK set, WORLD_SIZE > 1) the process group is initialised
(NCCL on CUDA, gloo on CPU), each rank reads its shard through a `DistributedSampler`, rank 0
downloads the weights while the others wait at a barrier and then load them from the cache, and only
rank 0 logs, shows progress bars and writes checkpoints. The process group stays initialised after
`finetune` returns (a later call reuses it); `torch.distributed.destroy_process_group()` ends it.
`_bn` models get SyncBatchNorm on CUDA (PyTorch's SyncBatchNorm has no CPU kernel; on CPU DDP
broadcasts rank 0's BatchNorm statistics at every step instead). On CUDA the forward runs under
bf16 autocast and in channels_last.

The checkpoint (`OUT/best.pth`, the epoch with the best validation accuracy, written atomically) is
a dict of tensors, strings, numbers and lists, so `torch.load(..., weights_only=True)` reads it:
"format", "arch", "in_chans", "classes", "preprocessing" (crop_size, resize_size, mean, std,
interpolation), "mode", "epoch", "val_acc", "weights" (the starting point) and "state_dict".
`load_finetuned(path)` (in checkpoint.py, importable from here) turns it back into a model, its class
names and its preset.

The settings of a run are one frozen `FinetuneConfig`, checked once when it is made; `finetune(...)` is
`run(FinetuneConfig(...))`. A new setting is a field there (checked in `__post_init__`) and is read
from `session.config` where it is used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
    check_classifier,
    check_device,
    classify,
    load,
    load_finetuned,
)
from .checkpoint import read_finetuned as _read_finetuned  # noqa: F401  # the old private name, kept importable
from .checks import check_int
from .config import IN_CHANNELS, MIN_SIZE, check_arch
from .model import VGG
from .transforms import ImageClassification, TrainClassification, gray_image, load_image

__all__ = [
    "FORMAT",
    "WEIGHT_FILE_SUFFIXES",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "Finetuned",
    "ImageFolder",
    "finetune",
    "load_finetuned",
    "run",
]

logger = logging.getLogger(__name__)

# FORMAT, Finetuned, load_finetuned and _read_finetuned live in checkpoint.py (the reading side of
# fine-tuned checkpoints) and are imported here for compatibility, as is WEIGHT_FILE_SUFFIXES.
CHECKPOINT_NAME = "best.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MODES = ("linear", "full")
DEFAULT_LR = {"linear": 0.05, "full": 0.001}
Mode = Literal["linear", "full"]


# --- data ------------------------------------------------------------------------------------------


class ImageFolder(Dataset[tuple[torch.Tensor, int]]):
    """`root/<class>/<image>` read with Pillow; items are (preset(image), class index).

    `classes` fixes the class order (and which folders must exist); by default the sorted folder names.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: nn.Module,
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
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root} for the classes {empty}")
        self.transform = transform
        self.gray = gray

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        image = load_image(path)
        if self.gray:
            image = gray_image(image)  # the conversion a gray preset applies at prediction time
        x: torch.Tensor = self.transform(image)
        return x, target


# --- results and checkpoints -----------------------------------------------------------------------


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_acc: float  # percent
    seconds: float


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


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of one run, all checked here, before anything is built, downloaded or written.

    `weights`: anything `checkpoint.load` takes (a record name such as "DEFAULT", an enum member, a
    `Weights` record, a state dict or `finetune` checkpoint file, a URL, None or "none" for random);
    the preprocessing of a record or a fine-tuned checkpoint is kept, files and URLs get ImageNet's.
    `lr`: default 0.05 for "linear", 0.001 for "full" (SGD with momentum 0.9, cosine schedule over the
    epochs). `device`: default CUDA when available (under torchrun, cuda:LOCAL_RANK). `amp`: bf16
    autocast, default on for CUDA only. `in_chans`: 3, or 1 to read the images as gray (the first conv
    is adapted, the mean and std averaged). `batch_size` is per process.
    """

    data: Path
    arch: str = "vgg16"
    weights: WeightsSource = "DEFAULT"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    mode: Mode = "linear"
    image_size: int = 224
    out: Path = Path("finetune-out")
    device: str | torch.device | None = None
    workers: int = 0
    amp: bool | None = None
    in_chans: int = IN_CHANNELS
    progress: bool = True
    seed: int = 0
    source: Source = field(init=False, repr=False, compare=False)  # what `weights` is, decided once

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.in_chans not in (1, IN_CHANNELS):
            raise ValueError(f"finetune reads RGB or gray images: in_chans must be 1 or 3, got {self.in_chans}")
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_int("workers", self.workers, least=0)
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
            raise ValueError(
                f"image_size must be an integer of at least {MIN_SIZE} (VGG's five 2x2 max-pools need "
                f"{MIN_SIZE}x{MIN_SIZE} pixels), got {size!r}; 224 is what ImageNet weights were trained at"
            )
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf):
            raise ValueError(
                f"lr must be a positive number, got {lr!r}; None uses {DEFAULT_LR[self.mode]} for mode {self.mode!r}"
            )
        object.__setattr__(self, "arch", check_arch(self.arch))
        object.__setattr__(self, "source", classify(self.weights, self.arch))
        check_classifier(self.source)  # fc8 is trained on fc7: the features-only checkpoint cannot start a run
        check_device(self.device)
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))

    @property
    def rate(self) -> float:
        """The learning rate: `lr`, or the mode's default."""
        return DEFAULT_LR[self.mode] if self.lr is None else float(self.lr)


def finetune(
    data: str | os.PathLike[str],
    *,
    arch: str = "vgg16",
    weights: WeightsSource = "DEFAULT",
    epochs: int = 10,
    batch_size: int = 32,
    lr: float | None = None,
    mode: Mode = "linear",
    image_size: int = 224,
    out: str | os.PathLike[str] = "finetune-out",
    device: str | torch.device | None = None,
    workers: int = 0,
    amp: bool | None = None,
    in_chans: int = IN_CHANNELS,
    progress: bool = True,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune `arch` on DATA (see the module docstring and `FinetuneConfig` for the arguments).

    Returns the history and the trained model. `weights` may be a `pathlib.Path`, e.g. an earlier
    `FinetuneResult.checkpoint`, or `vggnet.VGG16_Weights.DEFAULT`.
    """
    config = FinetuneConfig(
        Path(data), arch=arch, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, mode=mode,
        image_size=image_size, out=Path(out), device=device, workers=workers, amp=amp, in_chans=in_chans,
        progress=progress, seed=seed,
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


def _finetune(session: _Session, started: float) -> FinetuneResult:
    config, ctx, device = session.config, session.ctx, session.device
    data, in_chans, image_size = config.data, config.in_chans, config.image_size
    torch.manual_seed(config.seed)  # the same fresh fc8 on every rank (DDP broadcasts rank 0's anyway)
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir()) if (data / "train").is_dir() else []
    if not classes:
        raise FileNotFoundError(
            f"{data}/train: no class folders; expected {data}/train/<class>/<images> and {data}/val"
        )

    # Rank 0 fetches (and caches) the weights first; the others then find them in the cache.
    if not ctx.main:
        ctx.barrier()
    start = load(
        config.weights, arch=config.arch, num_classes=len(classes), in_chans=in_chans,
        progress=config.progress and ctx.main, classifier=True,
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
    gray = in_chans == 1
    train_eval = ImageFolder(data / "train", eval_preset, classes, gray)
    val = ImageFolder(data / "val", eval_preset, classes, gray)
    weights = config.source.text  # as given ("DEFAULT", a path, a URL, "None"): logged and kept in the checkpoint
    if ctx.main:
        logger.info(
            "fine-tuning %s (%s, %s) on %d classes: %d training and %d validation images, %d process(es) on %s",
            config.arch, config.mode, weights, len(classes), len(train_eval), len(val), ctx.world, device,
        )  # fmt: skip

    checkpoint = {
        "format": FORMAT, "arch": config.arch, "in_chans": in_chans, "classes": classes,
        "preprocessing": preprocessing, "mode": config.mode, "weights": str(weights),
    }  # fmt: skip
    result = FinetuneResult(model=model, classes=classes, rank=ctx.rank, world_size=ctx.world)
    if ctx.main:
        config.out.mkdir(parents=True, exist_ok=True)

    if config.mode == "linear":
        epoch_runner = _linear(session, model, train_eval, val)
    else:
        train = ImageFolder(
            data / "train", TrainClassification(crop_size=image_size, mean=mean, std=std), classes, gray
        )
        epoch_runner = _full(session, model, train, val)

    for epoch, train_loss, val_acc, seconds in epoch_runner:
        result.history.append(EpochStats(epoch, train_loss, val_acc, seconds))
        if ctx.main:
            logger.info("epoch %d/%d: train loss %.4f, val accuracy %.2f%%", epoch, config.epochs, train_loss, val_acc)
        if val_acc > result.best_val_acc:
            result.best_epoch, result.best_val_acc = epoch, val_acc
            if ctx.main:
                state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
                result.checkpoint = config.out / CHECKPOINT_NAME
                save_checkpoint(
                    {**checkpoint, "epoch": epoch, "val_acc": val_acc, "state_dict": state}, result.checkpoint
                )
    result.seconds = time.perf_counter() - started
    if ctx.main:
        logger.info(
            "best val accuracy %.2f%% at epoch %d; checkpoint %s",
            result.best_val_acc,
            result.best_epoch,
            result.checkpoint,
        )
    return result


EpochRun = Iterator[tuple[int, float, float, float]]  # epoch, mean train loss, val accuracy %, seconds


@dataclass
class _Loaders:
    ctx: _Dist
    batch_size: int
    workers: int
    device: torch.device
    seed: int

    def train(self, dataset: ImageFolder, shuffle: bool) -> tuple[DataLoader[Any], DistributedSampler[Any] | None]:
        """Every rank gets the same number of batches (DistributedSampler pads by repeating a few images)."""
        sampler: DistributedSampler[Any] | None = None
        if self.ctx.on:
            sampler = DistributedSampler(dataset, self.ctx.world, self.ctx.rank, shuffle=shuffle, seed=self.seed)
        generator = torch.Generator().manual_seed(self.seed)
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
    net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool
) -> torch.Tensor:
    """One SGD step on a batch, shared by both modes; returns the batch's summed loss (detached, on the device)."""
    with _autocast(device, amp):
        loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    optimizer.step()
    return loss.detach().float() * len(y)


def _linear(session: _Session, model: VGG, train: ImageFolder, val: ImageFolder) -> EpochRun:
    """Backbone once over train and val (this rank's shard), then fc8 on the cached fc7 features."""
    ctx, device, amp, progress = session.ctx, session.device, session.amp, session.progress
    loaders, epochs = session.loaders, session.config.epochs
    tic = time.perf_counter()
    model.freeze(upto="fc8")
    model.eval()
    train_loader, _ = loaders.train(train, shuffle=False)
    train_x, train_y = _features(model, train_loader, device, amp, _bar(train_loader, ctx, progress, "features train"))
    val_loader = loaders.val(val)
    val_x, val_y = _features(model, val_loader, device, amp, _bar(val_loader, ctx, progress, "features val"))
    if ctx.main:
        logger.info(
            "cached fc7 features of %d + %d images in %.1f s", len(train_x), len(val_x), time.perf_counter() - tic
        )

    fc8 = model.get_classifier()
    head: nn.Module = DistributedDataParallel(fc8) if ctx.on else fc8
    optimizer = torch.optim.SGD(fc8.parameters(), lr=session.config.rate, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(session.config.seed + ctx.rank)
    for epoch in _bar(range(1, epochs + 1), ctx, progress, "fc8 epochs"):
        order = torch.randperm(len(train_x), generator=generator).to(device)
        summed, count = torch.zeros((), device=device), 0  # on the device: no host sync per step
        for batch in torch.split(order, loaders.batch_size):  # every rank has the same number of batches
            # the fc7 features are float32 already: the head trains without autocast
            summed += _train_step(head, optimizer, train_x[batch], train_y[batch], device, amp=False)
            count += len(batch)
        schedule.step()
        with torch.no_grad():
            correct = (fc8(val_x).argmax(1) == val_y).sum().item() if len(val_x) else 0
        total = summed.item()
        yield (epoch, *_epoch_figures(ctx, total, count, correct, len(val_x)), time.perf_counter() - tic)
        tic = time.perf_counter()


@torch.no_grad()
def _features(
    model: VGG, loader: DataLoader[Any], device: torch.device, amp: bool, bar: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4096) float32 fc7 features and (N,) labels of everything `loader` yields, on `device`."""
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


def _full(session: _Session, model: VGG, train: ImageFolder, val: ImageFolder) -> EpochRun:
    """Every layer trains on augmented images; DDP averages the gradients over the ranks."""
    ctx, device, amp, progress = session.ctx, session.device, session.amp, session.progress
    loaders, epochs = session.loaders, session.config.epochs
    model.unfreeze()
    net: nn.Module = model
    if ctx.on and device.type == "cuda" and arch_has_bn(model):
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # untyped in torch
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if ctx.on:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    lr = session.config.rate
    optimizer = torch.optim.SGD(model.param_groups(lr), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    train_loader, sampler = loaders.train(train, shuffle=True)
    val_loader = loaders.val(val)
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        summed, count = torch.zeros((), device=device), 0  # on the device: no host sync per step
        for x, y in _bar(train_loader, ctx, progress, f"epoch {epoch}/{epochs}"):
            x, y = _to(x, device), y.to(device, non_blocking=True)
            summed += _train_step(net, optimizer, x, y, device, amp)
            count += len(y)
        schedule.step()
        total = summed.item()
        model.eval()
        correct, seen = 0, 0
        with torch.no_grad():
            for x, y in val_loader:
                with _autocast(device, amp):
                    logits = model(_to(x, device))
                correct += int((logits.argmax(1).cpu() == y).sum())
                seen += len(y)
        yield (epoch, *_epoch_figures(ctx, total, count, correct, seen), time.perf_counter() - tic)


def arch_has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _epoch_figures(ctx: _Dist, loss_sum: float, count: int, correct: float, seen: int) -> tuple[float, float]:
    """(mean train loss, val accuracy in percent) over all ranks."""
    loss_sum, n, correct, total = ctx.sum(loss_sum, count, correct, seen)
    return loss_sum / max(n, 1), 100.0 * correct / max(total, 1)
