"""Classify every image of folders, globs and lists: one line per image, written as it comes.

`predict_images` is what `vggnet predict --output FILE` runs: JSON Lines (one `prediction_record`
per image, or `{"image", "error"}` for a file that could not be read) or CSV (`prediction_columns`),
resumable, one share per rank under torchrun (the engine: `vggnet.batch.engine`). `iter_predictions` yields
the same records in one process, for a caller that prints them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from tqdm import tqdm

from vggnet.batch.engine import Session, logits_fn, totals
from vggnet.batch.output import Lines, Output, check_fresh
from vggnet.checks import check_int
from vggnet.data.images import list_images, shard
from vggnet.errors import UsageError
from vggnet.models.vgg import VGG

__all__ = ["PredictSummary", "iter_predictions", "predict_images", "prediction_columns", "prediction_record"]


@dataclass
class PredictSummary:
    """What a `predict_images` run did, summed over the ranks.

    Attributes:
        output: the file written.
        images: the images run now, read or not.
        failed: those that could not be read (their lines hold an "error").
        skipped: those already in the output (resume).
        seconds: the run's wall-clock time (its slowest rank's).
        images_per_s: images run per second.
        world_size: the processes that shared the work.
    """

    output: str
    images: int
    failed: int
    skipped: int
    seconds: float
    images_per_s: float
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, for JSON.

        Returns:
            Field name -> value.
        """
        return asdict(self)


def prediction_columns(topk: int) -> list[str]:
    """The CSV columns: image, then label_i, index_i, probability_i for i = 1..topk, then error.

    Args:
        topk: the classes per image.

    Returns:
        The column names, in order.
    """
    ranks = [f"{name}_{i}" for i in range(1, topk + 1) for name in ("label", "index", "probability")]
    return ["image", *ranks, "error"]


def prediction_record(
    image: str, probs: Sequence[float], indices: Sequence[int], categories: Sequence[str]
) -> dict[str, Any]:
    """{"image": path, "predictions": [{"index", "label", "probability"}, ...]}, best first.

    Args:
        image: the image's path.
        probs: the top classes' probabilities, best first.
        indices: their class indices.
        categories: the class names, in index order.

    Returns:
        One JSON Lines record.
    """
    predictions = [{"index": i, "label": categories[i], "probability": p} for p, i in zip(probs, indices)]
    return {"image": image, "predictions": predictions}


def _write(records: Iterator[dict[str, Any]], f: IO[str], lines: Lines) -> tuple[int, float]:
    """Write each record as one line of `lines`' format, as it comes; (how many were errors, seconds taken)."""
    tic = time.perf_counter()
    failed = 0
    for record in records:
        failed += "error" in record
        f.write(lines.line(record if lines.fmt == "jsonl" else _flat(record)))
    return failed, time.perf_counter() - tic


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """A record in the CSV's columns."""
    row: dict[str, Any] = {"image": record["image"], "error": record.get("error")}
    for rank, p in enumerate(record.get("predictions", ()), start=1):
        row |= {f"label_{rank}": p["label"], f"index_{rank}": p["index"], f"probability_{rank}": p["probability"]}
    return row


def iter_predictions(
    model: VGG,
    preset: nn.Module,
    paths: Sequence[str],
    categories: Sequence[str],
    session: Session,
    *,
    topk: int = 5,
    indices: Sequence[int] | None = None,
    optimize: bool = True,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bar: tqdm[Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per image of `paths` (those at `indices`, default all), in order, as they are computed.

    Args:
        model: a vggnet VGG.
        preset: its evaluation preset.
        paths: every image of the run.
        categories: one class name per output of fc8.
        session: the run's session (device, batch size, workers, rank).
        topk: classes per image.
        indices: the images to run (default all).
        optimize: run through `optimize_for_inference` (when `forward` is not given).
        forward: a `logits_fn(model, session, optimize)` made beforehand (default: made here).
        bar: a progress bar to advance by the images done.

    Yields:
        `prediction_record(...)`, or `{"image": path, "error": message}` for an unreadable file.

    Raises:
        UsageError: not one category per output, or `topk` under 1.
    """
    _check_categories(model, categories, topk)
    k = min(topk, model.num_classes)
    forward = forward if forward is not None else logits_fn(model, session, optimize)
    for batch in session.batches(paths, range(len(paths)) if indices is None else indices, preset):
        rows: dict[int, dict[str, Any]] = {i: {"image": paths[i], "error": msg} for i, msg in batch.errors}
        if batch.images is not None:
            top = forward(batch.images).softmax(dim=1).topk(k, dim=1)
            for i, values, classes in zip(batch.indices, top.values.tolist(), top.indices.tolist()):
                rows[i] = prediction_record(paths[i], values, classes, categories)
        for i in sorted(rows):
            yield rows[i]
        if bar is not None:
            bar.update(len(rows))


def _check_categories(model: VGG, categories: Sequence[str], topk: int) -> None:
    check_int("topk", topk)
    if len(categories) != model.num_classes:
        raise UsageError(
            f"{len(categories)} category names for a model with {model.num_classes} outputs; "
            "pass one name per output of fc8"
        )


def predict_images(
    model: VGG,
    preset: nn.Module,
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    categories: Sequence[str],
    topk: int = 5,
    format: str = "jsonl",
    resume: bool = False,
    overwrite: bool = False,
    from_file: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    progress: bool = True,
) -> PredictSummary:
    """Classify every image `sources` names into `output`, one line per image, written as it comes.

    Args:
        model: a vggnet VGG.
        preset: its evaluation preset (the weights' `transforms()`).
        sources: files, folders (their images at any depth), glob patterns and "-" (paths on stdin).
        output: the file to write.
        categories: one class name per output of fc8.
        topk: classes per image.
        format: "jsonl" (`prediction_record`, or an "error" for an unreadable file) or "csv" (`prediction_columns`).
        resume: keep the lines `output` holds and run only the other images.
        overwrite: replace what `output` holds (without `resume` or `overwrite`, an `output` holding
            something is refused; one process writes it at a time, another gets `InUseError`).
        from_file: a text file of image paths, one per line.
        batch_size: images per batch, per process.
        workers: DataLoader worker processes; default the cores the model leaves, up to 8.
        device: where the model runs; default CUDA when available.
        optimize: run through `optimize_for_inference` (uncompiled; bf16 on CUDA).
        progress: show a progress bar (rank 0, on a terminal).

    Returns:
        What the run did, the same on every rank (under torchrun each rank does its share, rank 0 merges).

    Raises:
        UsageError: not one category per output, `topk` under 1, an unknown format, or other columns to resume.
        OutputExistsError: `output` holds something, and neither `resume` nor `overwrite` was given.
        InUseError: another process writes `output`.
        NoImages: a source matches no image.
    """
    _check_categories(model, categories, topk)
    lines = Lines(format, prediction_columns(min(topk, model.num_classes)))
    check_fresh(Path(output), resume=resume, overwrite=overwrite)  # before a worker starts
    session = Session(device, batch_size, workers)
    paths: list[str] = session.broadcast(list_images(sources, from_file=from_file) if session.main else None)
    out = Output(Path(output), lines, session.ctx)
    with out.claimed():
        done = out.prepare(resume, overwrite)
        todo = [i for i in shard(len(paths), session.ctx.rank, session.ctx.world) if paths[i] not in done]
        forward = logits_fn(model, session, optimize)
        with out.writer() as f, session.bar(len(todo), "predict", progress) as bar:
            records = iter_predictions(
                model, preset, paths, categories, session, topk=topk, indices=todo, forward=forward, bar=bar
            )
            failed, seconds = _write(records, f, lines)
        out.merge(paths)
    ran, failed, seconds = totals(session, len(todo), failed, seconds)
    per_s = ran / seconds if seconds else 0.0
    return PredictSummary(str(out.path), ran, failed, len(paths) - ran, seconds, per_s, session.ctx.world)
