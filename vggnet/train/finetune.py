"""Fine-tuning: the settings of a run (`FinetuneConfig`), and `finetune` / `run`, the loop that ties the parts.

DATA holds `train/<class>/*.png|jpg|...` and `val/<class>/...` (or only `train/`, with `val_split`
taking a stratified, seeded share of it), read as `images.ImageFolder`s; the class names are the sorted
folder names of `train/`, and `val/` must have the same folders. The layout is checked before any
weights are fetched; an image that cannot be read stops the run naming it (nothing is skipped silently).

What trains is `mode` x `head` (`trainers.py` holds the two trainers):

- head "vgg" (fc6-fc8, the default), "gap" (global average pool + one Linear(512, N)) or "fc7" (the
  vgg head, trained as a linear probe on fc7 features: "fc7" is mode "linear" spelled as a head, and
  refuses mode "full").
- mode "linear": the backbone is frozen and run once over the data with the evaluation preset (no
  augmentation, so `augment`, `hflip`, `crop_scale` are refused there); only the last Linear trains.
- mode "full": every layer trains, with the training preset `augment` picks.

`early_stop=P` ends the run after P epochs without a better validation accuracy. A training loss that
is NaN, or more than 3x chance level, raises `Diverged` advising a lower `lr`, instead of training on.
After every epoch rank 0 writes OUT/last.pth, OUT/best.pth (on a better validation accuracy) and
OUT/history.jsonl (`runs.py` says what they hold); `resume=True` continues a run with the same history
as an uninterrupted one, and an OUT that already holds a run is refused unless `resume` or `overwrite`.
One process runs in OUT at a time (a second is refused, naming the first); `overwrite` keeps the old
run until the new one writes its first checkpoint, so a failed start (a 404, a diverging first epoch)
leaves it as it was. DATA must hold at least two classes.

Feedback from Python: `on_epoch(stats)` is called on rank 0 after every epoch with its `EpochStats`, and
`FinetuneResult.history` holds them all; the module also logs them at INFO (the CLI shows that on
stderr). Logging alone would be silent for Python users who configure none.

Under `torchrun` (`distributed.py`) rank 0 downloads the weights while the others wait at a barrier
and then load them from the cache; each rank trains on its shard, and only rank 0 logs, shows
progress bars and writes.

The settings of a run are one frozen `FinetuneConfig`, checked once when it is made; `finetune(...)` is
`run(FinetuneConfig(...))`. A new setting is a field there (checked in `__post_init__`), an option of
`vggnet finetune` (a test compares the two), and is read from `config` where it is used (a setting the
trainers read is also a property of `trainers.Settings`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import torch

from vggnet.checks import check_choice, check_device, check_float, check_int, check_workers, is_int
from vggnet.data.constants import MAX_SIZE
from vggnet.data.distributed import init_distributed
from vggnet.data.images import ImageFolder, train_and_val
from vggnet.data.outputs import check_output
from vggnet.data.transforms import ImageClassification
from vggnet.errors import BadCheckpointError, Diverged, UsageError, UsageTypeError
from vggnet.hub import fetch, verify_file
from vggnet.models.checkpoint import Loaded, load
from vggnet.models.config import HEADS, IN_CHANNELS, MIN_SIZE, check_arch
from vggnet.models.finetuned import backbone_identity
from vggnet.models.saved import header
from vggnet.models.sources import Source, WeightsSource, check_classifier, classify
from vggnet.models.state_dicts import key_list
from vggnet.models.vgg import VGG
from vggnet.train.runs import (
    CHECKPOINT_NAME,
    LAST_NAME,
    RESUME_FIX,
    EpochStats,
    FinetuneResult,
    check_resumed_state,
    checkpoint_state,
    plot_history,
    previous_run,
    read_last,
    run_folder,
    save_checkpoint,
    write_history,
)
from vggnet.train.trainers import (
    FullTrainer,
    LinearTrainer,
    Loaders,
    Session,
    Trainer,
    default_amp,
    restore,
    train_preset,
    training_state,
)

__all__ = [
    "AUGMENTS",
    "FinetuneConfig",
    "finetune",
    "run",
]

logger = logging.getLogger(__name__)

# Re-exported where users found them before: the checkpoint format lives in saved.py (the older one and
# Finetuned in finetuned.py), load_finetuned in checkpoint.py, WEIGHT_FILE_SUFFIXES in sources.py, ImageFolder
# in images.py, and EpochStats, FinetuneResult, read_history and plot_history in runs.py.
MODES = ("linear", "full")
AUGMENTS = ("none", "light", "standard")
DEFAULT_LR = {"linear": 0.05, "full": 0.001}
DIVERGED = 3.0  # a training loss above this many times chance level (ln of the class count, at least 1) diverged
Mode = Literal["linear", "full"]
Head = Literal["vgg", "gap", "fc7"]
Augment = Literal["none", "light", "standard"]


# --- the settings of a run ------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of one run, all checked here, before anything is built, downloaded or written.

    Attributes:
        data: the folder holding train/ (and val/, or `val_split`).
        arch: the architecture, e.g. "vgg16" or "vgg11_bn".
        weights: anything `checkpoint.load` takes (a record name such as "DEFAULT", an enum member, a
            `Weights` record, a state dict or `finetune` checkpoint file, a URL, None or "none" for
            random); the preprocessing of a record or a fine-tuned checkpoint is kept, files and URLs
            get ImageNet's.
        epochs: the epochs to run (the cosine schedule reaches 0 there).
        batch_size: images per batch, per process.
        lr: the learning rate; None: 0.05 for mode "linear", 0.001 for "full".
        mode: "linear" (the last Linear on frozen features) or "full" (every layer); see the module docstring.
        head: "vgg", "gap" or "fc7"; see the module docstring.
        image_size: the crop's side in pixels.
        out: the run's folder (best.pth, last.pth, history.jsonl).
        device: None: CUDA when available (under torchrun, cuda:LOCAL_RANK), else the CPU.
        workers: data loading processes (0: in the training process).
        amp: bf16 autocast; None: on for CUDA and for CPUs that compute bf16 natively (AMX-BF16 or
            AVX512-BF16, `deploy.inference.cpu_has_native_bf16`), off elsewhere. The checkpoints' "meta" records the
            precision used ("bf16" or "float32").
        in_chans: 3, or 1 to read the images as gray (the first conv is adapted, the mean and std averaged).
        progress: progress bars on rank 0, on a terminal.
        seed: seeds the initialisation, the order and the augmentation.
        augment: mode "full" only: "none" (the evaluation preset), "light" (random resized crop of
            60-100% of the area, flip) or "standard" (8-100%, flip; the default).
        hflip: overrides `augment`'s flip.
        crop_scale: overrides `augment`'s crop area share, (min, max).
        label_smoothing: the cross-entropy's, in [0, 1).
        weight_decay: SGD's.
        warmup_epochs: epochs of linear warm-up before the cosine.
        early_stop: patience in epochs on the validation accuracy; None runs every epoch.
        val_split: the share of each class held out for validation when DATA has no val/.
        resume: continue the run in `out` (see the module docstring).
        overwrite: replace the run in `out`, once the new one has written its first checkpoint.
        plot: a .png to draw the loss and accuracy curves into at the end.
        on_epoch: called with each epoch's `EpochStats` on rank 0 (Python only; the CLI prints the same line).

    Raises:
        UsageError: a setting out of range, or settings that contradict each other (one line naming them).
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
        self._check_what_trains()
        self._check_numbers()
        if self.resume and self.overwrite:
            raise UsageError("resume continues the run in out and overwrite replaces it: pass one of them")
        object.__setattr__(self, "arch", check_arch(self.arch))
        object.__setattr__(self, "source", classify(self.weights, self.arch))
        if self.head != "gap":
            check_classifier(self.source)  # fc8 is trained on fc7: the features-only checkpoint cannot start a run
        check_device(self.device)
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.plot is not None:
            object.__setattr__(self, "plot", Path(self.plot))
            if self.plot.suffix.lower() != ".png":
                raise UsageError(f"plot {self.plot}: the curves are drawn as a PNG; name a .png file")

    def _check_what_trains(self) -> None:
        """`mode` x `head`, and the augmentation only mode "full" has; `crop_scale` becomes a pair of floats."""
        check_choice("mode", self.mode, MODES)
        check_choice("head", self.head, HEADS)
        if self.head == "fc7" and self.mode != "linear":
            raise UsageError(
                "head 'fc7' is a linear probe on fc7 features (only fc8 trains), which contradicts mode "
                f"{self.mode!r}; use head 'vgg' to train every layer of the vgg head, or mode 'linear'"
            )
        if self.mode == "linear":
            given = [k for k in ("augment", "hflip", "crop_scale") if getattr(self, k) is not None]
            if given:
                raise UsageError(
                    f"mode 'linear' computes the features once, without augmentation, so {', '.join(given)} "
                    "cannot apply; use mode 'full' or leave them out"
                )
        if self.augment is not None:
            check_choice("augment", self.augment, AUGMENTS)
        if self.crop_scale is not None:
            scale = tuple(self.crop_scale)
            if self.augment == "none":
                raise UsageError("augment 'none' makes no random crop; drop crop_scale or use augment 'light'")
            if (
                len(scale) != 2
                or not all(isinstance(v, (int, float)) for v in scale)
                or not 0 < scale[0] <= scale[1] <= 1
            ):
                raise UsageError(
                    f"crop_scale must be (MIN, MAX) with 0 < MIN <= MAX <= 1, e.g. (0.6, 1.0), got {self.crop_scale!r}"
                )
            object.__setattr__(self, "crop_scale", (float(scale[0]), float(scale[1])))

    def _check_numbers(self) -> None:
        """Channels, counts, rates and the image size (its upper bound too, before any weights are fetched)."""
        if self.in_chans not in (1, IN_CHANNELS):
            raise UsageError(f"finetune reads RGB or gray images: in_chans must be 1 or 3, got {self.in_chans}")
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_workers("workers", self.workers)
        check_int("warmup_epochs", self.warmup_epochs, least=0)
        check_int("seed", self.seed, least=0)
        if self.early_stop is not None:
            check_int("early_stop", self.early_stop)
        check_float("label_smoothing", self.label_smoothing, least=0.0, below=1.0, expected="in [0, 1), e.g. 0.1")
        check_float("weight_decay", self.weight_decay, least=0.0, below=math.inf, expected="a number >= 0, e.g. 5e-4")
        if self.val_split is not None:
            check_float("val_split", self.val_split, above=0.0, below=1.0, expected="between 0 and 1, e.g. 0.2")
        size = self.image_size
        if not is_int(size, least=MIN_SIZE):
            raise UsageError(
                f"image_size must be an integer of at least {MIN_SIZE} (VGG's five 2x2 max-pools need "
                f"{MIN_SIZE}x{MIN_SIZE} pixels), got {size!r}; 224 is what ImageNet weights were trained at"
            )
        if size > MAX_SIZE:
            raise UsageError(f"image_size must be at most {MAX_SIZE} (the presets' bound), got {size}")
        if self.lr is not None:
            fix = f"None uses {DEFAULT_LR[self.mode]} for mode {self.mode!r}"
            check_float("lr", self.lr, above=0.0, below=math.inf, expected="a positive number", fix=fix)

    @property
    def rate(self) -> float:
        """The learning rate: `lr`, or the mode's default."""
        return DEFAULT_LR[self.mode] if self.lr is None else float(self.lr)

    @property
    def model_head(self) -> str:
        """The head the network is built with ("fc7" is the vgg head)."""
        return "gap" if self.head == "gap" else "vgg"

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues.

        Returns:
            Setting name -> value (JSON values; `lr` resolved, `weights` as given).
        """
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
    """Fine-tune `arch` on DATA: `run(FinetuneConfig(data, ...))` (see the module docstring).

    Args:
        data: the folder holding train/ (and val/).
        arch: the architecture, e.g. "vgg16".
        weights: where to start (`FinetuneConfig.weights`), e.g. `vggnet.VGG16_Weights.DEFAULT` or a Path.
        epochs: the epochs to run.
        batch_size: images per batch, per process.
        lr: the learning rate; None: the mode's default.
        mode: "linear" or "full".
        head: "vgg", "gap" or "fc7".
        image_size: the crop's side in pixels.
        out: the run's folder.
        device: None: CUDA when available, else the CPU.
        workers: data loading processes.
        amp: bf16 autocast; None: on for CUDA and CPUs with native bf16 (`FinetuneConfig.amp`).
        in_chans: 3, or 1 for gray images.
        progress: progress bars.
        seed: seeds the initialisation, the order and the augmentation.
        **recipe: every other `FinetuneConfig` field (augment, hflip, crop_scale, label_smoothing,
            weight_decay, warmup_epochs, early_stop, val_split, resume, overwrite, plot, on_epoch).

    Returns:
        The history, the best epoch, the files written and the trained model.

    Raises:
        UsageTypeError: a keyword that is no `FinetuneConfig` field.
    """
    known = {f.name for f in dataclasses.fields(FinetuneConfig) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise UsageTypeError(
            f"finetune() got unexpected keyword arguments {unknown}; valid: {', '.join(sorted(known))}"
        )
    config = FinetuneConfig(
        Path(data), arch=arch, weights=weights, epochs=epochs, batch_size=batch_size, lr=lr, mode=mode, head=head,
        image_size=image_size, out=Path(out), device=device, workers=workers, amp=amp, in_chans=in_chans,
        progress=progress, seed=seed, **recipe,
    )  # fmt: skip
    return run(config)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- the loop --------------------------------------------------------------------------------------


def run(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune with `config`'s settings (every rank under torchrun); see `finetune`.

    Args:
        config: the run's settings.

    Returns:
        The history, the best epoch, the files written and the trained model (on rank 0; the others'
        hold their own figures and no files).
    """
    started = time.perf_counter()
    dev = check_device(config.device) or _default_device()
    ctx = init_distributed(dev)
    if dev.type == "cuda" and ctx.on:
        dev = torch.device("cuda", ctx.local_rank)
    amp = default_amp(dev) if config.amp is None else config.amp
    session = Session(config, ctx, dev, amp, Loaders(ctx, config.batch_size, config.workers, dev, config.seed))
    if not ctx.main:
        return _finetune(config, session, started)
    if config.plot is not None:
        check_output(config.plot)  # a folder or a link there: refused before anything runs
    with run_folder(config.out):  # rank 0 alone writes OUT, and one run at a time
        return _finetune(config, session, started)


def _finetune(config: FinetuneConfig, session: Session, started: float) -> FinetuneResult:
    ctx = session.ctx
    torch.manual_seed(config.seed)  # the same fresh fc8 on every rank (DDP broadcasts rank 0's anyway)
    # the layout of DATA, checked before any weights are fetched
    train_files, val_files = train_and_val(config.data, config.val_split, config.seed, gray=config.in_chans == 1)
    classes = train_files.classes
    if len(classes) < 2:
        raise UsageError(
            f"finetune needs at least 2 classes, and {config.data / 'train'} holds {len(classes)} "
            f"({', '.join(classes)}): a classifier of one class is always right; add a folder per class"
        )
    previous, start, digest = _previous_and_start(config, session, classes)
    model = start.model.to(session.device)
    eval_preset = _eval_preset(config, start.preset)
    train_eval, val = train_files.with_transform(eval_preset), val_files.with_transform(eval_preset)
    if ctx.main:
        logger.info(
            "fine-tuning %s (%s, head %s, %s) on %d classes: %d training and %d validation images, "
            "%d process(es) on %s, %s, channels_last",
            config.arch, config.mode, config.head, config.source.text, len(classes), len(train_eval), len(val),
            ctx.world, session.device, _precision(session.amp),
        )  # fmt: skip
    small = config.mode == "linear" and config.source.kind != "random"  # checkpoints hold fc8 alone
    meta = _checkpoint_meta(config, model, classes, eval_preset, backbone=small and ctx.main, digest=digest)
    meta["meta"]["precision"] = _precision(session.amp)
    result = FinetuneResult(model=model, classes=classes, rank=ctx.rank, world_size=ctx.world)
    if ctx.main:
        config.out.mkdir(parents=True, exist_ok=True)
    trainer: Trainer
    if config.mode == "linear":
        trainer = _linear_trainer(session, model, train_eval, val)
    else:
        augment = train_preset(eval_preset, config.augment, config.hflip, config.crop_scale)
        trainer = FullTrainer(session, model, train_files.with_transform(augment), val)
    first, bad_epochs = 1, 0
    if previous is not None:
        first, bad_epochs = _restore(config, previous, trainer, result, small=small)
        logger.info("resuming after epoch %d", first - 1)
    _train_epochs(config, session, trainer, result, meta, small=small, first=first, bad_epochs=bad_epochs)
    model.to(memory_format=torch.contiguous_format)  # trained channels_last; handed back as built
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


def _precision(amp: bool) -> str:
    """What a run computes in, as its checkpoints' meta and its log say."""
    return "bf16" if amp else "float32"


def _previous_and_start(
    config: FinetuneConfig, session: Session, classes: list[str]
) -> tuple[dict[str, Any] | None, Loaded, str | None]:
    """The state of the run to resume (None: a fresh start), the starting weights and, for a file, their digest.

    Rank 0 makes the refusals, and fetches (and caches) the weights first; the others wait at a
    barrier, then find the weights in the cache and read last.pth for themselves. A linear probe on a
    file's weights records the file's SHA-256 (its checkpoints hold fc8 alone): the file is hashed first
    and loaded pinned to that digest, so the digest recorded is that of the bytes loaded.
    """
    ctx = session.ctx
    previous = (
        previous_run(config.out, config.recipe(), config.epochs, resume=config.resume, overwrite=config.overwrite)
        if ctx.main
        else None
    )
    if not ctx.main:
        ctx.barrier()
        if config.resume:
            previous = read_last(config.out / LAST_NAME)
    if previous is not None and previous["classes"] != classes:
        raise UsageError(
            f"{config.out} holds a run on the classes {key_list(previous['classes'], 6)}, {config.data} has "
            f"{key_list(classes, 6)}; resume it on the same data, or start again (--overwrite)"
        )
    digest = _file_digest(config) if config.mode == "linear" else None
    start = load(
        config.weights, arch=config.arch, num_classes=len(classes), in_chans=config.in_chans,
        progress=config.progress and ctx.main, classifier=config.model_head != "gap", head=config.model_head,
        sha256=digest,
    )  # fmt: skip
    if ctx.main:
        ctx.barrier()
    return previous, start, digest


def _file_digest(config: FinetuneConfig) -> str | None:
    """The SHA-256 of the file a file or URL source names (downloaded and cached first for http); else None."""
    path = _source_file(config.source)
    return None if path is None else verify_file(path)


def _eval_preset(config: FinetuneConfig, preset: ImageClassification) -> ImageClassification:
    """The evaluation preset at `image_size` with the starting weights' numbers (averaged for gray input)."""
    mean, std, interpolation = tuple(preset.mean), tuple(preset.std), preset.interpolation
    if config.in_chans == 1 and len(mean) == IN_CHANNELS:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    eval_preset = ImageClassification(crop_size=config.image_size, mean=mean, std=std, interpolation=interpolation)
    return eval_preset.resized(config.image_size)  # the shorter side to image_size * 256 / 224 first


def _checkpoint_meta(
    config: FinetuneConfig,
    model: VGG,
    classes: list[str],
    preset: ImageClassification,
    *,
    backbone: bool,
    digest: str | None,
) -> dict[str, Any]:
    """What every checkpoint of the run holds besides its epoch and weights: the header of vggnet's format
    (`saved.py`), with the mode and starting weights in its "meta"; `backbone`: the file's identity too.
    """
    meta = {"mode": config.mode, "weights": str(config.source.text)}  # as given ("DEFAULT", a path, a URL, "None")
    identity = backbone_identity(config.source, digest) if backbone else None
    return header(model, classes=classes, preset=preset, meta=meta, backbone=identity)


def _linear_trainer(session: Session, model: VGG, train: ImageFolder, val: ImageFolder) -> LinearTrainer:
    trainer = LinearTrainer(session, model, train, val)
    if session.ctx.main:
        logger.info(
            "cached the features of %d + %d images in %.1f s", len(trainer.train_x), len(trainer.val_x),
            trainer.cache_seconds,
        )  # fmt: skip
    return trainer


def _train_epochs(
    config: FinetuneConfig,
    session: Session,
    trainer: Trainer,
    result: FinetuneResult,
    meta: dict[str, Any],
    *,
    small: bool,
    first: int,
    bad_epochs: int,
) -> None:
    """Epochs `first` to `config.epochs`, into `result`; rank 0 saves after each. Stops early or on divergence."""
    chance = math.log(max(len(result.classes), 2))
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
        if session.ctx.main:
            entry = {**meta, "meta": {**meta["meta"], "epoch": epoch, "val_acc": stats.val_acc}}
            entry["state_dict"] = checkpoint_state(result.model, head_only=small)
            _save_epoch(config, trainer, result, entry, improved=improved, stopped=stopped, bad_epochs=bad_epochs)
            logger.info("%s", stats.line(config.epochs))
            if config.on_epoch is not None:
                config.on_epoch(stats)
        if stopped:
            result.stopped_early = True
            if session.ctx.main:
                logger.info("no better val accuracy for %d epochs: stopping early", bad_epochs)
            break


def _save_epoch(
    config: FinetuneConfig,
    trainer: Trainer,
    result: FinetuneResult,
    entry: dict[str, Any],
    *,
    improved: bool,
    stopped: bool,
    bad_epochs: int,
) -> None:
    """Rank 0 after an epoch: best.pth on a better validation accuracy, last.pth (with the training state), history."""
    epoch = entry["meta"]["epoch"]
    if improved:
        result.checkpoint = config.out / CHECKPOINT_NAME
        save_checkpoint(entry, result.checkpoint)
    train_state = {
        **training_state(trainer, result, epoch, bad_epochs), "recipe": config.recipe(),
        "stopped_early": stopped, "finished": stopped or epoch == config.epochs,
    }  # fmt: skip
    result.last = config.out / LAST_NAME
    save_checkpoint({**entry, "train": train_state}, result.last)
    write_history(config.out, result.history)


def _restore(
    config: FinetuneConfig, previous: dict[str, Any], trainer: Trainer, result: FinetuneResult, *, small: bool
) -> tuple[int, int]:
    """`restore` of last.pth once its tensors fit the model; any state torch refuses is one line naming the file."""
    last = config.out / LAST_NAME
    check_resumed_state(previous["state_dict"], trainer.model.state_dict(), last, head_only=small)
    try:
        return restore(previous, trainer, result)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:  # the optimizer's, the RNG's states
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise BadCheckpointError(f"{last} cannot be resumed: {detail}; {RESUME_FIX}") from err


def _source_file(source: Source) -> Path | None:
    """The local file a file or URL source was read from (the hub's cached copy for http)."""
    if source.kind == "file":
        return Path(source.text).resolve()
    if source.kind == "url":
        if source.text.lower().startswith("file:"):
            return Path(unquote(urlsplit(source.text).path))
        return fetch(source.text, progress=False)  # already cached by the load
    return None
