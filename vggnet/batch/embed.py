"""Features of a named tap for every image, in `.npy` shards with an index: `vggnet embed`.

`embed_images` writes `features-NNNNNN.npy` (float32 rows) and `index.jsonl` (image -> shard and
row, or its error) into a folder, resumable, one share per rank under torchrun (the engine:
`vggnet.batch.engine`); `read_embeddings` reads a folder back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vggnet.batch.engine import Session, autocast, slowest, totals
from vggnet.batch.output import Lines, Output, complete_lines
from vggnet.checks import check_int
from vggnet.data.images import Batch, list_images, shard
from vggnet.errors import UsageError
from vggnet.models.vgg import VGG

__all__ = ["EmbedSummary", "embed_images", "features_fn", "read_embeddings"]

INDEX_NAME = "index.jsonl"
SETTINGS_NAME = "embed.json"
SHARD_PREFIX = "features-"


@dataclass
class EmbedSummary:
    """What an `embed_images` run did, summed over the ranks."""

    out: str
    layer: str
    dim: int  # features per image (0 when no image of this run could be read)
    images: int
    failed: int
    skipped: int
    seconds: float
    images_per_s: float
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def features_fn(
    model: VGG, layer: str, session: Session, pool: bool, normalize: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, D) float32 features of `layer` for a batch: globally average-pooled maps, else flattened."""
    if layer not in model.layer_names():
        raise UsageError(f"no layer {layer!r}; valid: {', '.join(model.layer_names())}")
    net = model.eval().to(session.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(session.device):
            f = net.extract(x.to(session.device, non_blocking=True), layer)[layer].float()
        if f.dim() == 4:
            f = f.mean(dim=(2, 3)) if pool else f.flatten(1)  # (N, C, H, W) -> (N, C) or (N, C*H*W)
        return F.normalize(f, dim=1) if normalize else f

    return run


def embed_images(
    model: VGG,
    preset: nn.Module,
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    layer: str = "fc7",
    pool: bool = False,
    normalize: bool = False,
    shard_size: int = 4096,
    resume: bool = False,
    from_file: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Features of `layer` for every image into the folder `out`: `features-NNNNNN.npy` shards of float32
    rows, and `index.jsonl` mapping each image to its shard and row (or to an "error").

    `pool` averages a (C, H, W) map over H and W (a 4-D tap only); `normalize` scales each row to unit
    L2 norm. A shard is written whole before its index lines, so a killed run loses at most the rows
    of its unwritten shards, which `resume=True` computes again. `read_embeddings(out)` reads it all back.
    """
    check_int("shard_size", shard_size)
    session = Session(device, batch_size, workers)
    folder = Path(out)
    settings = {"layer": layer, "pool": pool, "normalize": normalize}
    forward = features_fn(model, layer, session, pool, normalize)
    paths: list[str] = session.broadcast(list_images(sources, from_file=from_file) if session.main else None)
    if session.main:
        _check_settings(folder, settings, resume)
    index = Output(folder / INDEX_NAME, Lines("jsonl"), session.ctx)
    done = index.prepare(resume)
    first = session.broadcast(_next_shard(folder, done) if session.main else None)
    todo = [i for i in shard(len(paths), session.ctx.rank, session.ctx.world) if paths[i] not in done]
    failed, dim = 0, 0
    tic = time.perf_counter()
    with index.writer() as f, session.bar(len(todo), f"embed {layer}", progress) as bar:
        shards = _Shards(folder, first + session.ctx.rank, session.ctx.world, shard_size, index.lines, f)
        for batch in session.batches(paths, todo, preset):
            failed += len(batch.errors)
            feats = None
            if batch.images is not None:
                feats = forward(batch.images).cpu()
                dim = feats.shape[1]
            shards.add(paths, batch, feats)
            bar.update(len(batch.indices) + len(batch.errors))
        shards.write()
        seconds = time.perf_counter() - tic
    index.merge(paths)
    ran, failed, seconds = totals(session, len(todo), failed, seconds)
    dim = int(slowest(session, float(dim)))  # a rank that read no image saw no width
    per_s = ran / seconds if seconds else 0.0
    return EmbedSummary(str(folder), layer, dim, ran, failed, len(paths) - ran, seconds, per_s, session.ctx.world)


class _Shards:
    """The rows of the shard being filled and the index lines that wait for it: a full shard is written at once.

    Rank r fills shards `first`, `first + step`, ... (step: the world size), so the ranks never share one.
    """

    def __init__(self, folder: Path, first: int, step: int, size: int, lines: Lines, f: IO[str]) -> None:
        self.folder, self.number, self.step, self.size, self.lines, self.f = folder, first, step, size, lines, f
        self.rows: list[torch.Tensor] = []  # this shard's rows, at most `size` of them
        self.pending: list[dict[str, Any]] = []  # index lines waiting for their shard to be written

    def add(self, paths: Sequence[str], batch: Batch, feats: torch.Tensor | None) -> None:
        """A batch's rows (`feats`, one per image read) and index lines, in image order, errors included."""
        records: dict[int, dict[str, Any]] = {i: {"image": paths[i], "error": msg} for i, msg in batch.errors}
        for i, row in zip(batch.indices, feats if feats is not None else ()):
            records[i] = {"image": paths[i], "shard": _shard_name(self.number), "row": len(self.rows)}
            self.rows.append(row)
            if len(self.rows) == self.size:
                self.pending += [records.pop(j) for j in sorted(records) if j <= i]
                self.write()
                self.rows, self.pending, self.number = [], [], self.number + self.step
        self.pending += [records[j] for j in sorted(records)]
        if not self.rows:  # only errors wait: nothing to lose
            self.f.writelines(self.lines.line(r) for r in self.pending)
            self.pending = []

    def write(self) -> None:
        """The shard being filled (if it has rows), then the index lines waiting for it."""
        _write_shard(self.folder, self.number, self.rows, self.pending, self.f)


def _shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:06d}.npy"


def _write_shard(
    folder: Path, number: int, rows: list[torch.Tensor], pending: list[dict[str, Any]], f: IO[str]
) -> None:
    """Shard `number` (atomically: a temporary file, then rename), then the index lines that point into it."""
    if rows:
        path = folder / _shard_name(number)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                np.save(out, torch.stack(rows).numpy())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in pending)
    f.flush()


def _check_settings(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    """Resuming with another layer, pooling or normalisation would mix two kinds of rows: refuse."""
    path = folder / SETTINGS_NAME
    if resume and path.exists():
        held = json.loads(path.read_text(encoding="utf-8"))
        if held != settings:
            raise UsageError(
                f"{folder} holds embeddings made with {held}, this run asks for {settings}; "
                "resume with the same --layer/--pool/--normalize, or write to another folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        for old in folder.glob(SHARD_PREFIX + "*.npy"):
            old.unlink()
    path.write_text(json.dumps(settings) + "\n", encoding="utf-8")


def _next_shard(folder: Path, done: set[str]) -> int:
    """The first free shard number; shards no index line points to (a killed run's last ones) are removed."""
    used = {json.loads(line).get("shard") for line in complete_lines(folder / INDEX_NAME)}
    numbers = [-1]
    for path in folder.glob(SHARD_PREFIX + "*.npy"):
        if path.name in used:
            numbers.append(int(path.stem[len(SHARD_PREFIX) :]))
        else:
            path.unlink()
    return max(numbers) + 1


def read_embeddings(out: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """(image paths, (N, D) float32 rows) of an `embed_images` folder, in index order; failed images left out."""
    folder = Path(out)
    if not (folder / INDEX_NAME).is_file():
        raise FileNotFoundError(f"{folder}: no {INDEX_NAME}; write it with embed_images or `vggnet embed`")
    paths: list[str] = []
    wanted: dict[str, tuple[list[int], list[int]]] = {}  # shard -> (positions in the result, its rows)
    for line in complete_lines(folder / INDEX_NAME):
        record = json.loads(line)
        if "shard" in record:
            positions, rows = wanted.setdefault(record["shard"], ([], []))
            positions.append(len(paths))
            rows.append(record["row"])
            paths.append(record["image"])
    result: np.ndarray | None = None
    for name, (positions, rows) in wanted.items():
        shard_rows = np.load(folder / name, mmap_mode="r")  # (rows, D)
        if result is None:
            result = np.empty((len(paths), shard_rows.shape[1]), dtype=shard_rows.dtype)
        result[positions] = shard_rows[rows]
    return paths, result if result is not None else np.zeros((0, 0), dtype=np.float32)
