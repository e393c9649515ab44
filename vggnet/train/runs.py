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

An OUT that already holds a run is refused unless the run is resumed or overwritten. One process at a
time runs in OUT (`run_folder` holds `OUT/.vggnet.lock`; a second gets `InUseError` naming the first);
a run starts by removing the temporary files a killed save left. `overwrite` keeps the old run's files
until the new run writes its first checkpoint over them. A `last.pth` to resume goes through the checks
of `check_last` (the fields and their types, finite values) and of `check_resumed_state` (the tensors
fit the model); each failure is one line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from vggnet.checks import field_problems
from vggnet.data.outputs import atomic_write, check_output, remove_leftovers, save_png, write_text, writer_lock
from vggnet.errors import BadCheckpointError, MissingPathError, OutputExistsError, OutputPathError, UsageError
from vggnet.hub import weights_only_load
from vggnet.models.finetuned import check_finetuned
from vggnet.models.state_dicts import key_list
from vggnet.models.vgg import VGG

__all__ = [
    "CHECKPOINT_NAME",
    "HISTORY_NAME",
    "LAST_NAME",
    "EpochStats",
    "FinetuneResult",
    "check_last",
    "check_resumed_state",
    "checkpoint_state",
    "plot_history",
    "previous_run",
    "read_history",
    "read_last",
    "run_folder",
    "save_checkpoint",
    "write_history",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "best.pth"
LAST_NAME = "last.pth"
HISTORY_NAME = "history.jsonl"
LOCK_NAME = ".vggnet.lock"  # held by the one process running in OUT


@dataclass
class EpochStats:
    """One epoch's figures, as `finetune` logs them and OUT/history.jsonl holds them (one JSON line each).

    Attributes:
        epoch: the epoch's number, from 1.
        train_loss: the mean training loss over the epoch, summed over the ranks.
        val_acc: the validation accuracy (acc@1) after the epoch, in percent.
        seconds: the epoch's wall time in seconds.
        train_acc: the training accuracy over the epoch, in percent (on the augmented images).
        val_loss: the mean validation loss.
        lr: the learning rate the epoch started with (the last parameter group's, the head's).
        images_per_s: the training pass's throughput, in images per second.
    """

    epoch: int
    train_loss: float
    val_acc: float  # percent
    seconds: float
    train_acc: float = 0.0
    val_loss: float = 0.0
    lr: float = 0.0
    images_per_s: float = 0.0

    def line(self, epochs: int) -> str:
        """Format the epoch as the one line `vggnet finetune` shows on stderr.

        Args:
            epochs: the run's number of epochs, shown as "epoch 3/10".

        Returns:
            The line: losses, accuracies, learning rate, time and throughput.
        """
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {self.train_acc:.2f}%, "
            f"val loss {self.val_loss:.4f} acc {self.val_acc:.2f}%, lr {self.lr:.3g}, {self.seconds:.1f} s, "
            f"{self.images_per_s:.0f} images/s"
        )


@dataclass
class FinetuneResult:
    """What `finetune` returns on every rank (only rank 0 wrote `checkpoint`, `last` and the history).

    Attributes:
        model: the trained network as after the last epoch (not the best one; not DDP-wrapped).
        classes: the class names in the order of the model's outputs.
        history: one `EpochStats` per epoch run, resumed epochs included.
        best_epoch: the epoch of the best validation accuracy (0 before any epoch).
        best_val_acc: that accuracy in percent (-1 before any epoch).
        checkpoint: OUT/best.pth, the best epoch's checkpoint; None when no epoch was run.
        seconds: the run's wall time.
        rank: this process's rank under torchrun (0 alone).
        world_size: how many processes trained (1 alone).
        last: OUT/last.pth, the latest checkpoint with the training state `--resume` continues from.
        stopped_early: True when early stopping ended the run before its last epoch.
    """

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
    """Write a checkpoint atomically: a temporary file in the same folder, fsynced, then renamed into place.

    A reader never sees half a file; a link at `path` is replaced, never written through
    (`vggnet.data.outputs.atomic_write`).

    Args:
        checkpoint: what to save (`torch.save`): tensors, strings, numbers, lists and dicts, so that
            `weights_only=True` reads it back.
        path: the file to write (OUT/best.pth, OUT/last.pth).
    """
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def write_history(out: Path, history: Sequence[EpochStats]) -> Path:
    """Write OUT/history.jsonl, one JSON line per epoch, whole or not at all (as `save_checkpoint` writes).

    Args:
        out: the run folder.
        history: the epochs so far.

    Returns:
        The path written.
    """
    return write_text(out / HISTORY_NAME, "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in history))


@contextlib.contextmanager
def run_folder(out: Path) -> Iterator[None]:
    """Hold OUT for one run: lock it (making the folder if missing) and remove the temporary files of a killed save.

    A folder this made and the run left empty (it failed before its first checkpoint) is removed again.

    Args:
        out: the run folder.

    Yields:
        Nothing; the run happens inside the `with` block, with OUT/.vggnet.lock held until it ends.

    Raises:
        InUseError: another process runs in OUT (the message names its pid and host).
        OutputPathError: OUT is a file.
    """
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"cannot run in {out}: it is not a folder; name a folder (--out DIR)")
    made = not out.exists()
    try:
        with writer_lock(out / LOCK_NAME, out):
            remove_leftovers(out, (CHECKPOINT_NAME, LAST_NAME, HISTORY_NAME))
            yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty


def _head_names(model: VGG) -> set[str]:
    fc = model.get_classifier()
    prefix = next(name for name, m in model.named_modules() if m is fc)
    return {f"{prefix}.{k}" for k in fc.state_dict()}


def checkpoint_state(model: VGG, head_only: bool = False) -> dict[str, torch.Tensor]:
    """Copy a model's state dict to the CPU for a checkpoint, or only its last Linear's.

    Args:
        model: the model being trained (not DDP-wrapped).
        head_only: keep only the last Linear's weight and bias: for a linear probe on a backbone the checkpoint
            names (and loading fetches and verifies again), kilobytes instead of 491 MiB.

    Returns:
        Key -> contiguous CPU tensor, detached copies that later training steps do not change.
    """
    names = _head_names(model) if head_only else None
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if names is None or k in names
    }


def read_history(path: str | os.PathLike[str]) -> list[EpochStats]:
    """Read the epochs of a run's `history.jsonl`.

    Args:
        path: the history file, or the run folder holding one.

    Returns:
        One `EpochStats` per line, in order.
    """
    path = Path(path)
    path = path / HISTORY_NAME if path.is_dir() else path
    return [EpochStats(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def plot_history(history: Sequence[EpochStats], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw loss and accuracy (train and val) per epoch as a PNG, with Pillow.

    The file is written whole or not at all, never through a link.

    Args:
        history: the epochs to draw (`FinetuneResult.history`, `read_history`).
        path: the PNG to write.
        title: the line above the panels; default "N epochs".

    Returns:
        The path written.
    """
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
    return save_png(image, path)  # whole or not at all, never through a link


def previous_run(
    out: Path, recipe: dict[str, Any], epochs: int, *, resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Decide how a run starts in OUT: afresh, over the run OUT holds, or from OUT/last.pth.

    Nothing is deleted here: with `overwrite` the old run's files stay until the new run's first checkpoint
    replaces them.

    Args:
        out: the run folder.
        recipe: the new run's settings (`FinetuneConfig.recipe`); a resumed run must have the same ones.
        epochs: the epochs the new run goes to; a resumed run must not have reached them.
        resume: continue the run in OUT from its last.pth.
        overwrite: start afresh even if OUT holds a run.

    Returns:
        The training state read from OUT/last.pth (checked by `read_last`) to resume; None to start afresh.

    Raises:
        MissingPathError: `resume` and OUT holds no last.pth.
        OutputPathError: `resume`, and best.pth or history.jsonl is a link, a FIFO or a folder.
        OutputExistsError: OUT holds a run (best.pth, last.pth or history.jsonl) and neither `resume` nor
            `overwrite` was given; the message says how far that run went.
        BadCheckpointError: last.pth cannot be read or does not hold what a run writes.
        UsageError: the run to resume had other settings, or is finished (more epochs are needed).
    """
    files = [out / name for name in (LAST_NAME, CHECKPOINT_NAME, HISTORY_NAME) if (out / name).exists()]
    if overwrite:
        return None
    last = out / LAST_NAME
    if resume:
        if not last.is_file():
            raise MissingPathError(f"nothing to resume: {last} does not exist; drop resume (--resume) to start a run")
        for name in (CHECKPOINT_NAME, HISTORY_NAME):  # a link planted there would be named as the run's best
            check_output(out / name)
        return _resumable(out, read_last(last), recipe, epochs)
    if files:
        raise OutputExistsError(
            f"{out} already holds a run{_how_far(last)}: {', '.join(p.name for p in files)}; pass resume (--resume) "
            "to continue it, overwrite (--overwrite) to replace it, or another out (--out)"
        )
    return None


def _resumable(out: Path, state: dict[str, Any], recipe: dict[str, Any], epochs: int) -> dict[str, Any]:
    """`state` if the run it holds can go on to `epochs` with `recipe`; else why not, in one line."""
    train, last = state["train"], out / LAST_NAME
    held = train["recipe"]
    mistyped = [
        k for k, v in recipe.items() if k in held and _kind(held[k]) not in (_kind(v), "none") and v is not None
    ]
    if mistyped:
        listed = ", ".join(f"{k} ({held[k]!r:.40})" for k in sorted(mistyped))
        verb = "is" if len(mistyped) == 1 else "are"
        raise BadCheckpointError(
            f"{last} is damaged: its recipe's {listed} {verb} not of the type a run writes; {RESUME_FIX}"
        )
    different = {k: (v, held.get(k)) for k, v in recipe.items() if held.get(k) != v}
    if different:
        listed = "; ".join(f"{k}: {old!r} then, {new!r} now" for k, (new, old) in sorted(different.items()))
        raise UsageError(f"{out} holds a run with other settings ({listed}); resume it with the same ones")
    if train["epoch"] >= epochs or train.get("stopped_early"):
        raise UsageError(
            f"{out} holds a finished run ({train['epoch']} epochs); pass more epochs to continue it, or "
            "overwrite (--overwrite) to start again"
        )
    return state


def _kind(value: object) -> str:
    """What a recipe value is, as far as a resumed run cares: an int may stand for a float (lr=1 is 1.0)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "flag"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _how_far(last: Path) -> str:
    """ " (finished after epoch N)" from last.pth, or "" if there is none or it cannot be read."""
    try:
        train = read_last(last)["train"]
    except (OSError, BadCheckpointError):
        return ""
    return f" ({'finished' if train.get('finished') else 'stopped'} after epoch {train.get('epoch')})"


# --- what a last.pth must hold to be resumed ---------------------------------------------------------

RESUME_FIX = "start the run again (--overwrite), or put back a good copy of it"
# what the "train" entry of last.pth holds, and the type of each (`trainers.training_state` writes it)
_TRAIN_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "epoch": int, "optimizer": dict, "schedule": dict, "rng": torch.Tensor, "generator": torch.Tensor,
    "history": list, "best_epoch": int, "best_val_acc": (int, float), "bad_epochs": int, "recipe": dict,
}  # fmt: skip


def read_last(path: Path) -> dict[str, Any]:
    """OUT/last.pth read (weights only) and checked by `check_last`: what `restore` may put back.

    Args:
        path: the run's last.pth.

    Returns:
        Its contents.

    Raises:
        BadCheckpointError: the file cannot be read, or does not hold what a run's last.pth holds
            (one line naming the file, what is wrong and what to do).
    """
    try:
        with _open_own(path) as f:
            state = weights_only_load(f, path, mmap=False, map_location="cpu")
    except BadCheckpointError as err:
        raise BadCheckpointError(f"{err}; the run cannot be resumed from it: {RESUME_FIX}") from None
    check_last(state, path)
    return dict(state)


def _open_own(path: Path) -> IO[bytes]:
    """A file of the run opened for reading: a regular file, never a link followed nor a FIFO waited on."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        mode = os.lstat(path).st_mode
        what = "a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        if fd >= 0:
            os.close(fd)
        raise BadCheckpointError(f"{path} is {what}, not the regular file a run writes; {RESUME_FIX}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_last(state: object, path: Path) -> None:
    """BadCheckpointError unless `state` holds what `finetune` writes to last.pth, every value finite.

    The checkpoint's fields (`check_finetuned`), the training state's fields and their types, the
    history's epochs, the recipe's values (numbers, names, flags, lists) and every tensor's values
    (NaN or Inf: a damaged file, since a run that diverges stops before it saves).

    Args:
        state: what last.pth holds.
        path: last.pth, named in the message.

    Raises:
        BadCheckpointError: one line naming the file, the first problems found and what to do.
    """
    if not isinstance(state, dict):
        raise BadCheckpointError(f"{path} holds a {type(state).__name__}, not a run's last.pth; {RESUME_FIX}")
    try:
        check_finetuned(state, str(path))
    except BadCheckpointError as err:
        raise BadCheckpointError(f"{str(err).split('; nothing was loaded')[0]}; {RESUME_FIX}") from None
    train = state.get("train")
    problems = ["'train' (the training state) is missing"] if not isinstance(train, dict) else _train_problems(train)
    if problems:
        raise BadCheckpointError(f"{path} cannot be resumed: {'; '.join(problems[:4])}; {RESUME_FIX}")
    odd = [str(k) for k, v in state["state_dict"].items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if odd:
        raise BadCheckpointError(
            f"{path} is damaged: its state dict's {key_list(odd, 4)} are not tensors; {RESUME_FIX}"
        )
    flagged = _nonfinite(state)
    if flagged:
        raise BadCheckpointError(
            f"{path} is damaged: {key_list(flagged, 4)} hold(s) NaN or Inf, which no saved run holds (a run "
            f"that diverges stops before it saves); {RESUME_FIX}"
        )


def _train_problems(train: Mapping[str, Any]) -> list[str]:
    """What is missing from, or of the wrong type in, last.pth's training state."""
    problems = field_problems(train, _TRAIN_FIELDS, " from the training state")
    if problems:
        return problems
    names = {f.name for f in dataclasses.fields(EpochStats)}
    if train["epoch"] < 1 or len(train["history"]) != train["epoch"] or not all(
        isinstance(s, dict) and {"epoch", "train_loss", "val_acc", "seconds"} <= s.keys() <= names
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s.values())
        for s in train["history"]
    ):  # fmt: skip
        problems.append(f"its history does not hold the {train['epoch']} epochs it says it ran")
    held = train["optimizer"].get("state", {})
    if not (isinstance(held, dict) and all(isinstance(v, dict) for v in held.values())):
        problems.append("its optimizer state is not a mapping of parameters to their values")
    odd = [k for k, v in train["recipe"].items() if not isinstance(k, str) or not _recipe_value(v)]
    if odd:
        problems.append(f"the recipe's {key_list([str(k) for k in odd], 4)} are not settings a run takes")
    return problems


def _recipe_value(value: object) -> bool:
    """A setting's value as `FinetuneConfig.recipe` writes it: None, a flag, a number, a name, or a list of numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _nonfinite(state: Mapping[str, Any]) -> list[str]:
    """The keys of the floating-point tensors of the model and the optimizer state that hold NaN or Inf."""
    tensors = dict(state["state_dict"])
    for number, values in state["train"]["optimizer"].get("state", {}).items():
        if isinstance(values, dict):
            tensors.update({f"optimizer state {number} {name}": v for name, v in values.items()})
    return [
        key
        for key, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]


def check_resumed_state(
    state: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], path: Path, *, head_only: bool
) -> None:
    """Check that last.pth's state dict fits the model being resumed, key for key and shape for shape.

    Args:
        state: last.pth's "state_dict".
        model: the model's own state dict.
        path: last.pth, named in the message.
        head_only: the run saves the last Linear only (a linear probe on verified weights): only its keys.

    Raises:
        BadCheckpointError: keys are missing or unexpected, or shapes differ; one line naming the file, the
            first few keys and what to do.
    """
    unexpected = sorted(k for k in state if k not in model)
    missing = [] if head_only else sorted(k for k in model if k not in state and not k.endswith("num_batches_tracked"))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(model[k].shape)} in the model"
        for k in state
        if k in model and state[k].shape != model[k].shape
    )
    if unexpected or missing or shapes:
        found = [f"missing keys {key_list(missing, 4)}" if missing else "", f"unexpected keys {key_list(unexpected, 4)}"
                 if unexpected else "", f"other shapes {key_list(shapes, 2)}" if shapes else ""]  # fmt: skip
        raise BadCheckpointError(
            f"{path} does not fit the model of this run ({'; '.join(f for f in found if f)}); {RESUME_FIX}"
        )
