"""A fine-tuning run's folder: what `finetune` writes into OUT after every epoch, and how it is read back.

- `OUT/best.pth`: the checkpoint of the best validation accuracy; `OUT/last.pth`: the latest one, with
  the training state (optimizer, schedule, epoch, RNG states, history) that `previous_run` hands to a
  resumed run. Both are written by `save_checkpoint`: a temporary file, then a rename.
- `OUT/history.jsonl`: one `EpochStats` per line (`write_history`, `read_history`); `plot_history`
  draws its curves as a PNG with Pillow.
- `FinetuneResult` is what `finetune` returns: the history, the best epoch, the files written.

The checkpoints are in vggnet's format (`vggnet.models.saved`, what `vggnet.save` writes to a .pth), dicts
of tensors, strings, numbers and lists that `torch.load(..., weights_only=True)` reads: "format", "arch",
"head", "in_chans", "num_classes", "classes", "preprocessing" (crop_size, resize_size, mean, std,
interpolation, antialias), "meta" (mode, epoch, val_acc, weights: the starting point) and "state_dict".
In mode "linear" on weights that can be verified (a record, a file, a URL) the state dict holds only the
trained Linear, and "backbone" the name and SHA-256 of those weights: kilobytes to megabytes instead of
491 MiB, loaded back (and verified) by `vggnet.load`, the builders and `vggnet predict` as a full one is.

An OUT that already holds a run is refused unless the run is resumed or overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vggnet.errors import BadCheckpointError, MissingPathError, OutputExistsError, UsageError
from vggnet.models.vgg import VGG

__all__ = [
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
    "LAST_NAME",
    "EpochStats",
    "FinetuneResult",
    "checkpoint_state",
    "plot_history",
    "previous_run",
    "read_history",
    "save_checkpoint",
    "write_history",
]

CHECKPOINT_NAME = "best.pth"
LAST_NAME = "last.pth"
HISTORY_NAME = "history.jsonl"


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


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (a reader never sees half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_history(out: Path, history: Sequence[EpochStats]) -> Path:
    """Write OUT/history.jsonl (one JSON line per epoch) as `save_checkpoint` writes: whole or not at all."""
    path = out / HISTORY_NAME
    _write_text(path, "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in history))
    return path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _head_names(model: VGG) -> set[str]:
    fc = model.get_classifier()
    prefix = next(name for name, m in model.named_modules() if m is fc)
    return {f"{prefix}.{k}" for k in fc.state_dict()}


def checkpoint_state(model: VGG, head_only: bool = False) -> dict[str, torch.Tensor]:
    """A CPU copy of the state dict for a checkpoint; with `head_only`, the last Linear's alone.

    `head_only` is for a linear probe on a backbone the checkpoint names, which loading fetches again.
    """
    names = _head_names(model) if head_only else None
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if names is None or k in names
    }


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


def previous_run(
    out: Path, recipe: dict[str, Any], epochs: int, *, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """The training state in OUT/last.pth to resume, for a run of `recipe` to `epochs`; None to start afresh.

    Refuses to overwrite a run unless `overwrite` (which deletes its files here), and to resume one with
    another recipe, or one already finished.
    """
    files = [out / name for name in (LAST_NAME, CHECKPOINT_NAME, HISTORY_NAME) if (out / name).exists()]
    if overwrite:
        for path in files:
            path.unlink()
        return None
    last = out / LAST_NAME
    if resume:
        if not last.is_file():
            raise MissingPathError(f"nothing to resume: {last} does not exist; drop resume (--resume) to start a run")
        state: dict[str, Any] = torch.load(last, map_location="cpu", weights_only=True)
        train = state.get("train")
        if not isinstance(train, dict):
            raise BadCheckpointError(f"{last} has no training state to resume from")
        different = {k: (v, train["recipe"].get(k)) for k, v in recipe.items() if train["recipe"].get(k) != v}
        if different:
            listed = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (new, old) in sorted(different.items()))
            raise UsageError(f"{out} holds a run with other settings ({listed}); resume it with the same ones")
        if train["epoch"] >= epochs or train.get("stopped_early"):
            raise UsageError(
                f"{out} holds a finished run ({train['epoch']} epochs); pass more epochs to continue it, or "
                "overwrite (--overwrite) to start again"
            )
        return state
    if files:
        finished = ""
        if last.is_file():
            train = torch.load(last, map_location="cpu", weights_only=True).get("train") or {}
            finished = f" ({'finished' if train.get('finished') else 'stopped'} after epoch {train.get('epoch')})"
        raise OutputExistsError(
            f"{out} already holds a run{finished}: {', '.join(p.name for p in files)}; pass resume (--resume) "
            "to continue it, overwrite (--overwrite) to replace it, or another out (--out)"
        )
    return None
