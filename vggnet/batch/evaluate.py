"""Accuracy on a labelled folder: acc@1, acc@5, per-class accuracy, mean loss, the confusion matrix.

The folder is an ImageFolder (`DATA/<class>/...`) or ImageNet's validation layout (synset folders,
mapped to the 1000 class indices); see `images.labelled_images`. Under torchrun every rank scores
its share of the images (r, r + world, ...: none twice, no padding) and the counts are summed, so
every rank returns the same `Evaluation`. `plot_confusion` draws the matrix as a PNG with Pillow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vggnet.batch.engine import Session, logits_fn, slowest
from vggnet.data.images import LabelledImages, labelled_images, shard
from vggnet.data.outputs import save_png
from vggnet.errors import UsageError
from vggnet.models.vgg import VGG

__all__ = ["Evaluation", "evaluate", "plot_confusion"]

logger = logging.getLogger(__name__)

TOPK = 5


@dataclass
class Evaluation:
    """The figures of one `evaluate` call, over all ranks. Accuracies are fractions (0-1).

    Attributes:
        images: the images scored (readable).
        failed: the images that could not be read: left out of every figure.
        acc1: top-1 accuracy.
        acc5: acc@k with k = min(5, number of classes).
        loss: the mean cross-entropy.
        per_class: class name -> acc@1 over its images, for the classes the data holds.
        confusion: (C, C) int64: row = true class, column = predicted.
        classes: index -> name, C of them.
        layout: how folders were mapped to classes: "classes", "imagenet" or "sorted".
        seconds: the run's wall-clock time (its slowest rank's).
        images_per_s: images scored per second.
        world_size: the processes that shared the work.
    """

    images: int
    failed: int
    acc1: float
    acc5: float
    loss: float
    per_class: dict[str, float]
    confusion: torch.Tensor = field(repr=False)
    classes: list[str] = field(repr=False)
    layout: str = "sorted"
    seconds: float = 0.0
    images_per_s: float = 0.0
    world_size: int = 1

    def to_dict(self, confusion: bool = False) -> dict[str, Any]:
        """Plain values for JSON; the C x C matrix only when asked (1,000,000 numbers for ImageNet).

        Args:
            confusion: add `classes` and the `confusion` matrix as nested lists.

        Returns:
            A dict `json.dumps` takes.
        """
        out = {
            "images": self.images, "failed": self.failed, "acc1": self.acc1, "acc5": self.acc5,
            "loss": self.loss, "per_class": self.per_class, "layout": self.layout, "seconds": self.seconds,
            "images_per_s": self.images_per_s, "world_size": self.world_size,
        }  # fmt: skip
        if confusion:
            out |= {"classes": self.classes, "confusion": self.confusion.tolist()}
        return out


def evaluate(
    model: VGG,
    preset: nn.Module,
    data: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    progress: bool = True,
) -> Evaluation:
    """Score `model` (with its evaluation `preset`) on the labelled folder `data`.

    Under torchrun each rank scores its share and every rank gets the summed figures.

    Args:
        model: a vggnet VGG.
        preset: its evaluation preset (the weights' `transforms()`).
        data: a folder of class folders, `data/<class>/<images>` (at any depth below the class folder).
        classes: the model's class names (a fine-tuned checkpoint's, or ImageNet's); folders named after
            them get their index, ImageNet synset folders the synset's index, other folders their sorted
            position.
        batch_size: images per batch, per process.
        workers: DataLoader worker processes; default the cores the model leaves, up to 8.
        device: where the model runs; default CUDA when available.
        optimize: run through `optimize_for_inference` (uncompiled; bf16 on CUDA).
        progress: show a progress bar (rank 0, on a terminal).

    Returns:
        The figures, the confusion matrix included.

    Raises:
        UsageError: the folders are not laid out as needed, or their number of classes is not the model's.
        NoImages: `data` is not a folder.
    """
    session = Session(device, batch_size, workers)
    labelled = labelled_images(data, classes, model.num_classes)
    if len(labelled.classes) != model.num_classes:
        raise UsageError(
            f"{data} has {len(labelled.classes)} classes, the model {model.num_classes} outputs; "
            f"evaluate a model with {len(labelled.classes)} outputs, or pass its class names as `classes`"
        )
    forward = logits_fn(model, session, optimize)
    counts, loss_total, seconds = _score(forward, session, labelled, preset, model.num_classes, progress)
    n = model.num_classes
    matrix = counts[: n * n].view(n, n).cpu()
    hits, failed = int(counts[n * n]), int(counts[n * n + 1])
    return _figures(matrix, hits, failed, loss_total, labelled.classes, labelled.layout, seconds, session.ctx.world)


def _score(
    forward: Callable[[torch.Tensor], torch.Tensor],
    session: Session,
    labelled: LabelledImages,
    preset: nn.Module,
    n: int,
    progress: bool,
) -> tuple[torch.Tensor, float, float]:
    """This rank's share scored, summed over the ranks: (the flat confusion matrix, then the top-k hits and the
    failed images; the summed cross-entropy; the slowest rank's seconds)."""
    k = min(TOPK, n)
    targets = torch.tensor(labelled.targets, dtype=torch.int64)
    confusion = torch.zeros(n * n, dtype=torch.int64, device=session.device)
    topk_hits = torch.zeros((), dtype=torch.int64, device=session.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=session.device)
    failed = 0
    mine = shard(len(labelled.paths), session.ctx.rank, session.ctx.world)
    tic = time.perf_counter()
    with session.bar(len(mine), "evaluate", progress) as bar:
        for batch in session.batches(labelled.paths, mine, preset):
            failed += len(batch.errors)
            if batch.images is not None:
                logits = forward(batch.images)  # (N, C) float32 on the device
                y = targets[batch.indices].to(logits.device)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                cells = y * n + logits.argmax(1)  # (true, predicted) as one index into the flat C x C matrix
                confusion.index_put_((cells,), torch.ones_like(cells), accumulate=True)  # O(batch), not O(C^2)
                topk_hits += (logits.topk(k, dim=1).indices == y[:, None]).any(1).sum()
            bar.update(len(batch.indices) + len(batch.errors))
    seconds = time.perf_counter() - tic
    counts = session.sum(torch.cat([confusion, topk_hits.view(1), torch.tensor([failed], device=confusion.device)]))
    loss_total = float(session.sum(loss_sum.view(1)).item())
    return counts, loss_total, slowest(session, seconds)


def _figures(
    matrix: torch.Tensor, hits: int, failed: int, loss_sum: float, classes: list[str], layout: str,
    seconds: float, world: int,
) -> Evaluation:  # fmt: skip
    images = int(matrix.sum())
    per_row, right = matrix.sum(1), matrix.diagonal()
    per_class = {classes[i]: int(right[i]) / int(per_row[i]) for i in range(len(classes)) if per_row[i] > 0}
    return Evaluation(
        images=images, failed=failed, acc1=int(right.sum()) / images if images else 0.0,
        acc5=hits / images if images else 0.0, loss=loss_sum / images if images else 0.0, per_class=per_class,
        confusion=matrix, classes=classes, layout=layout, seconds=seconds,
        images_per_s=images / seconds if seconds else 0.0, world_size=world,
    )  # fmt: skip


# --- the picture ---------------------------------------------------------------------------------

MAX_LABELLED = 40  # class names drawn beside the matrix up to this many classes


def plot_confusion(
    evaluation: Evaluation, path: str | os.PathLike[str], *, cell: int | None = None, labels: bool = True
) -> Path:
    """The confusion matrix as a PNG: row i = true class i, column j = predicted j.

    Each cell is shaded by the share of row i's images (white 0 to dark blue 1), under a title with the
    accuracies.

    Args:
        evaluation: what `evaluate` returned.
        path: the PNG to write.
        cell: pixels per cell; default up to 24, the matrix at most about 960 px wide.
        labels: class names on the left and top (up to 40 classes).

    Returns:
        `path`.
    """
    from PIL import Image, ImageDraw, ImageFont

    matrix = evaluation.confusion.to(torch.float64)
    n = matrix.shape[0]
    rows = matrix.sum(1, keepdim=True).clamp(min=1)
    share = (matrix / rows).clamp(0, 1)  # (C, C) in 0-1
    side = cell if cell is not None else max(1, min(24, 960 // n))
    # white (255, 255, 255) -> dark blue (8, 48, 107), per channel
    low, high = torch.tensor([255.0, 255.0, 255.0]), torch.tensor([8.0, 48.0, 107.0])
    rgb = (low + share[..., None] * (high - low)).round().to(torch.uint8)  # (C, C, 3)
    grid = rgb.repeat_interleave(side, 0).repeat_interleave(side, 1).numpy()
    picture = Image.fromarray(grid, "RGB")
    labelled = labels and n <= MAX_LABELLED
    font = ImageFont.load_default()
    margin = 8 + (max(_text_width(font, name) for name in evaluation.classes) if labelled else 0)
    title = f"acc@1 {evaluation.acc1:.2%}  acc@5 {evaluation.acc5:.2%}  ({evaluation.images} images)"
    top = 24 + (margin if labelled else 0)
    canvas = Image.new(
        "RGB", (max(margin + picture.width + 8, _text_width(font, title) + 16), top + picture.height + 8), "white"
    )
    canvas.paste(picture, (margin, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill="black", font=font)
    if labelled:
        for i, name in enumerate(evaluation.classes):
            y = top + i * side + (side - 10) // 2
            draw.text((margin - 4 - _text_width(font, name), y), name, fill="black", font=font)
            label = Image.new("RGB", (_text_width(font, name) + 2, 12), "white")
            ImageDraw.Draw(label).text((0, 0), name, fill="black", font=font)
            rotated = label.rotate(90, expand=True)
            canvas.paste(rotated, (margin + i * side + (side - 12) // 2, top - 4 - rotated.height))
    return save_png(canvas, path)  # whole or not at all, never through a link


def _text_width(font: Any, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)
