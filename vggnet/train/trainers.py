"""The two ways a fine-tuning run trains, behind one `Trainer`: the model, its optimizer and schedule, one epoch.

- `LinearTrainer` (mode "linear"): the backbone runs once over train and val, in evaluation mode; the
  float32 features the last Linear reads are kept in memory, and only that Linear trains on them.
- `FullTrainer` (mode "full"): every layer trains on augmented images; the vgg head gets one
  parameter group per block (`VGG.param_groups`).

Both take SGD steps through `train_step` (momentum 0.9, `weight_decay`, `label_smoothing`) on a
learning rate that warms up linearly over `warmup_epochs`, then follows a cosine to 0 at `epochs`.
Under torchrun each rank reads its shard (`Loaders`), DDP averages the gradients, and an epoch's
figures are summed over the ranks into one `EpochStats`. The model and the batches are channels_last
(oneDNN's and cuDNN's fast layout for convolutions); with `amp` the forward runs under bf16 autocast,
which `default_amp` turns on for CUDA and for CPUs that compute bf16 natively (`cpu_has_native_bf16`). `_bn`
models get SyncBatchNorm under DDP on CUDA. `restore` puts a resumed run's states (from
`runs.previous_run`) back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from vggnet.data.distributed import Dist
from vggnet.data.images import ImageFolder
from vggnet.data.transforms import ImageClassification, TrainClassification
from vggnet.deploy.inference import cpu_has_native_bf16
from vggnet.models.vgg import VGG
from vggnet.train.runs import EpochStats, FinetuneResult

__all__ = [
    "FullTrainer",
    "LinearTrainer",
    "Loaders",
    "Session",
    "Settings",
    "Trainer",
    "arch_has_bn",
    "default_amp",
    "restore",
    "train_preset",
    "train_step",
    "training_state",
]

CROP_SCALES = {"light": (0.6, 1.0), "standard": (0.08, 1.0)}  # random-resized-crop area shares by `augment`


class Settings(Protocol):
    """What the trainers read of a run's settings (`finetune.FinetuneConfig` holds them, checked)."""

    @property
    def rate(self) -> float:
        """The learning rate the schedule starts from (after warm-up)."""
        ...

    @property
    def weight_decay(self) -> float:
        """SGD's weight decay."""
        ...

    @property
    def label_smoothing(self) -> float:
        """The cross-entropy's label smoothing, in [0, 1)."""
        ...

    @property
    def epochs(self) -> int:
        """The number of epochs the cosine schedule reaches 0 at."""
        ...

    @property
    def warmup_epochs(self) -> int:
        """The epochs of linear warm-up before the cosine."""
        ...

    @property
    def seed(self) -> int:
        """Seeds the shuffling and the augmentation."""
        ...

    @property
    def progress(self) -> bool:
        """Whether progress bars were asked for."""
        ...


@dataclass
class Session:
    """What every part of a run shares: its settings, the process group, the device, the loaders.

    Attributes:
        config: the run's settings.
        ctx: the process group (a single process outside torchrun).
        device: where the model trains.
        amp: whether the forward runs under bf16 autocast (`default_amp` decides when not asked).
        loaders: the DataLoaders' settings.
    """

    config: Settings
    ctx: Dist
    device: torch.device
    amp: bool
    loaders: Loaders

    @property
    def progress(self) -> bool:
        """Progress bars asked for (shown on rank 0, on a terminal)."""
        return self.config.progress


def _schedule(optimizer: torch.optim.Optimizer, config: Settings) -> torch.optim.lr_scheduler.LambdaLR:
    """Per epoch: linear warm-up over `warmup_epochs`, then a cosine from lr to 0 at `epochs`."""
    warmup, epochs = config.warmup_epochs, config.epochs

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(epochs - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Loaders:
    """The DataLoaders of a run: this rank's share of a data set, in batches of `batch_size` per process.

    Attributes:
        ctx: the process group, which decides this rank's share.
        batch_size: images per batch, per process.
        workers: data loading processes (0: in the training process).
        device: where the batches go (pinned memory for CUDA).
        seed: seeds DistributedSampler's shuffling.
    """

    ctx: Dist
    batch_size: int
    workers: int
    device: torch.device
    seed: int

    def train(
        self, dataset: ImageFolder, shuffle: bool, generator: torch.Generator
    ) -> tuple[DataLoader[Any], DistributedSampler[Any] | None]:
        """The training loader: every rank gets the same number of batches (DistributedSampler pads by repeating).

        Args:
            dataset: the training images.
            shuffle: reshuffle every epoch.
            generator: the shuffling's generator (saved with the run, so that a resumed run reshuffles alike).

        Returns:
            The loader, and the DistributedSampler under torchrun (None outside), whose epoch the trainer sets.
        """
        sampler: DistributedSampler[Any] | None = None
        if self.ctx.on:
            sampler = DistributedSampler(dataset, self.ctx.world, self.ctx.rank, shuffle=shuffle, seed=self.seed)
        loader = DataLoader(
            dataset, self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler, generator=generator,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        return loader, sampler

    def val(self, dataset: ImageFolder) -> DataLoader[Any]:
        """The validation loader: rank r reads images r, r + world, ...: no padding, so the summed counts are exact.

        Args:
            dataset: the validation images.

        Returns:
            The loader over this rank's share, in order.
        """
        shard = Subset(dataset, list(range(self.ctx.rank, len(dataset), self.ctx.world)))
        return DataLoader(shard, self.batch_size, num_workers=self.workers, pin_memory=self.device.type == "cuda")


def default_amp(device: torch.device) -> bool:
    """Whether a run on `device` trains under bf16 autocast when `amp` is not given.

    Args:
        device: where the model trains.

    Returns:
        True on CUDA, and on a CPU where bf16 is native (`deploy.inference.cpu_has_native_bf16`); False
            elsewhere.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_native_bf16()


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on `device`, channels_last as the model (the convolutions' fast layout on CPU and GPU)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _bar(iterable: Any, ctx: Dist, progress: bool, desc: str) -> Any:
    # disable=None: bars only on a terminal, as hub's download bars
    shown = None if progress and ctx.main else True
    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr, disable=shown, dynamic_ncols=True)


def train_step(
    net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device: torch.device,
    amp: bool, smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One SGD step on a batch, shared by both modes.

    Args:
        net: the module that trains (the model, its head, or their DDP wrapper).
        optimizer: the optimizer of `net`'s parameters.
        x: the batch, on `device`.
        y: its (N,) class indices.
        device: where `net` is (the autocast's device type).
        amp: run the forward and the loss under bf16 autocast.
        smoothing: the cross-entropy's label smoothing.

    Returns:
        The batch's summed loss (float32) and its count of right answers, both on the device (no host sync).
    """
    with _autocast(device, amp):
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    optimizer.step()
    return loss.detach().float() * len(y), (logits.detach().argmax(1) == y).sum()


class Trainer:
    """What a mode provides the loop: the model, optimizer, schedule, the generator to save, one epoch."""

    model: VGG
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator

    def epoch(self, epoch: int) -> EpochStats:
        """Train one epoch, then validate; the figures are summed over the ranks.

        Args:
            epoch: the epoch's number, from 1.

        Returns:
            The epoch's figures.

        Raises:
            NotImplementedError: always; the modes' trainers implement it.
        """
        raise NotImplementedError


def _stats(
    ctx: Dist, epoch: int, train: Sequence[float], val: Sequence[float], seconds: float, train_seconds: float
) -> EpochStats:
    """EpochStats from this rank's (loss sum, correct, count) of train and val, summed over the ranks."""
    loss, correct, n, vloss, vcorrect, vn = ctx.sum(*train, *val)
    n, vn = max(n, 1), max(vn, 1)
    return EpochStats(
        epoch=epoch, train_loss=loss / n, val_acc=100.0 * vcorrect / vn, seconds=seconds,
        train_acc=100.0 * correct / n, val_loss=vloss / vn, images_per_s=n / max(train_seconds, 1e-9),
    )  # fmt: skip


class LinearTrainer(Trainer):
    """Backbone once over train and val (this rank's shard), then the last Linear on the cached features.

    Args:
        session: what the run shares.
        model: the network; all but its last Linear is frozen.
        train: the training images (with the evaluation preset: no augmentation).
        val: the validation images.
    """

    def __init__(self, session: Session, model: VGG, train: ImageFolder, val: ImageFolder) -> None:
        ctx, device, amp, progress = session.ctx, session.device, session.amp, session.progress
        self.session, self.model = session, model
        tic = time.perf_counter()
        if model.head == "gap":
            model.requires_grad_(False)
            model.get_classifier().requires_grad_(True)
        else:
            model.freeze(upto="fc8")
        model.eval()
        model.to(memory_format=torch.channels_last)
        loader, _ = session.loaders.train(train, False, torch.Generator().manual_seed(session.config.seed))
        self.train_x, self.train_y = _features(
            model, loader, device, amp, _bar(loader, ctx, progress, "features train")
        )
        val_loader = session.loaders.val(val)
        self.val_x, self.val_y = _features(
            model, val_loader, device, amp, _bar(val_loader, ctx, progress, "features val")
        )
        self.cache_seconds = time.perf_counter() - tic  # reported by `finetune`, which logs
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
            loss, right = train_step(
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


class FullTrainer(Trainer):
    """Every layer trains on augmented images; DDP averages the gradients over the ranks.

    Args:
        session: what the run shares.
        model: the network; every layer is unfrozen.
        train: the training images, through the augmentation (`train_preset`).
        val: the validation images.
    """

    def __init__(self, session: Session, model: VGG, train: ImageFolder, val: ImageFolder) -> None:
        ctx, device, config = session.ctx, session.device, session.config
        self.session, self.model = session, model
        model.unfreeze()
        net: nn.Module = model
        if ctx.on and device.type == "cuda" and arch_has_bn(model):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # untyped in torch
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
            loss, right = train_step(self.net, self.optimizer, x, y, device, amp, session.config.label_smoothing)
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
    """Whether `model` has BatchNorm layers (a `_bn` architecture), which DDP on CUDA synchronises.

    Args:
        model: the network.

    Returns:
        True if any layer is a BatchNorm2d.
    """
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def training_state(trainer: Trainer, result: FinetuneResult, epoch: int, bad_epochs: int) -> dict[str, Any]:
    """What `restore` reads back from last.pth's "train" entry: the trainer's states and the run's figures so far.

    Args:
        trainer: the run's trainer (its optimizer, schedule and generator).
        result: the run so far (its history and best epoch).
        epoch: the epoch just finished.
        bad_epochs: the epochs since the last better validation accuracy.

    Returns:
        The training state, of tensors, numbers, lists and dicts that `torch.load(weights_only=True)` reads.
    """
    return {
        "epoch": epoch, "optimizer": trainer.optimizer.state_dict(), "schedule": trainer.schedule.state_dict(),
        "rng": torch.get_rng_state(), "generator": trainer.generator.get_state(),
        "history": [dataclasses.asdict(s) for s in result.history], "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc, "bad_epochs": bad_epochs,
    }  # fmt: skip


def restore(previous: dict[str, Any], trainer: Trainer, result: FinetuneResult) -> tuple[int, int]:
    """Put last.pth's model, optimizer, schedule and RNG states back.

    Args:
        previous: last.pth's contents, checked (`runs.previous_run`).
        trainer: the new run's trainer, whose states are replaced.
        result: the new run's result, which gets the history and the best epoch.

    Returns:
        The first epoch to run, and the epochs since the last better validation accuracy.
    """
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
    return int(train["epoch"]) + 1, int(train["bad_epochs"])


def train_preset(
    eval_preset: ImageClassification,
    augment: str | None,
    hflip: bool | None,
    crop_scale: tuple[float, float] | None,
) -> nn.Module:
    """What mode "full" reads images through: `augment` ("standard" by default) on `eval_preset`'s crop and numbers.

    Args:
        eval_preset: the evaluation preset (crop size, mean, std, interpolation).
        augment: "none" is the evaluation preset; "light" and "standard" a random resized crop of
            CROP_SCALES' area share; None is "standard".
        hflip: flip half the images left-right; None flips unless `augment` is "none".
        crop_scale: the random crop's (min, max) area share, instead of `augment`'s.

    Returns:
        A transform from a PIL image to a normalised tensor.
    """
    augment = augment or "standard"
    hflip = hflip if hflip is not None else augment != "none"
    if augment == "none" and not hflip:
        return eval_preset
    scale = crop_scale or CROP_SCALES.get(augment)
    mean, std = eval_preset.mean, eval_preset.std
    if scale is None:  # "none" with a flip: the evaluation crop, flipped half the time
        return nn.Sequential(_Flip(), eval_preset)
    return TrainClassification(
        crop_size=eval_preset.crop_size, mean=mean, std=std, interpolation=eval_preset.interpolation,
        hflip_prob=0.5 if hflip else 0.0, scale=scale,
    )  # fmt: skip


class _Flip(nn.Module):
    """A PIL image mirrored left-right with probability 1/2 (torch's generator)."""

    def forward(self, img: Any) -> Any:
        from PIL import Image  # lazy: Pillow is needed only to read images

        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1).item() < 0.5 else img
