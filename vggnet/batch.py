"""Running a model over many images: streamed, resumable, one share per rank under torchrun.

The engine behind `predict_images`, `embed_images` and `vggnet.evaluate.evaluate`:

- Images are decoded and preprocessed in DataLoader workers (`images.ImageFiles`), so loading runs
  in parallel with the model, and a file that cannot be read comes out as an error, not an exception.
- Results are written as they come, one line per image (JSON Lines, or CSV on request), so memory
  does not grow with the number of images.
- `resume=True` keeps what the output already holds (a truncated last line from a killed run is cut
  off) and runs only the images it lacks.
- Under `torchrun` (WORLD_SIZE > 1) rank r reads images r, r + world, ... of the list, writes
  `OUTPUT.partR`, and rank 0 merges the parts into OUTPUT in the list's order once every rank is done.
  A part left by a killed run is taken into OUTPUT by the next `resume=True` run, whatever its world size.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .checks import check_int
from .finetune import _Dist, _init_distributed
from .images import Batch, ImageFiles, collate, list_images, shard
from .inference import optimize_for_inference
from .model import VGG

__all__ = [
    "FORMATS",
    "EmbedSummary",
    "PredictSummary",
    "Session",
    "embed_images",
    "predict_images",
    "read_embeddings",
]

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
Format = Literal["jsonl", "csv"]
PART = ".part"  # OUTPUT.part0, OUTPUT.part1, ...: one per rank until rank 0 merges them


# --- one process's place in the run -------------------------------------------------------------


class Session:
    """The device and the rank this process runs on (one process, or one of torchrun's), and its data loading."""

    def __init__(
        self, device: str | torch.device | None = None, batch_size: int = 32, workers: int | None = None
    ) -> None:
        check_int("batch_size", batch_size)
        if workers is not None:
            check_int("workers", workers, least=0)
        dev = torch.device(device) if device is not None else _default_device()
        self.ctx: _Dist = _init_distributed(dev)
        if dev.type == "cuda" and self.ctx.on:
            dev = torch.device("cuda", self.ctx.local_rank)
        self.device = dev
        self.batch_size = batch_size
        # Workers decode while the model computes; on a CPU they share the cores with it, so a few.
        self.workers = workers if workers is not None else min(8, max(1, (os.cpu_count() or 1) // self.ctx.world - 1))

    @property
    def main(self) -> bool:
        return self.ctx.main

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (pickled); `value` itself in one process."""
        if not self.ctx.on:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks (on the process group's device, returned on `t`'s)."""
        if not self.ctx.on:
            return t
        on = t.to(self.device) if dist.get_backend() == "nccl" else t.cpu()
        dist.all_reduce(on)
        return on.to(t.device)

    def batches(self, paths: Sequence[str], indices: Sequence[int], transform: nn.Module) -> Iterator[Batch]:
        """The images `indices` of `paths`, decoded and preprocessed by the workers, in order."""
        if not indices:
            return
        loader = DataLoader(
            Subset(ImageFiles(paths, transform), indices), self.batch_size, collate_fn=collate,
            num_workers=self.workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )  # fmt: skip
        for batch in loader:
            for index, message in batch.errors:
                logger.error("cannot read the image %s: %s", paths[index], message)
            yield batch

    def bar(self, total: int, desc: str, progress: bool) -> tqdm[Any]:
        """Rank 0's bar in images, with images/s; disable=None shows it on a terminal only."""
        shown = None if progress and self.main else True
        return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=shown, dynamic_ncols=True)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def logits_fn(model: VGG, session: Session, optimize: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """float32 logits of a batch: through `optimize_for_inference` (uncompiled) or the model itself."""
    if optimize:
        fast = optimize_for_inference(model, device=session.device, compile=False)
        return lambda x: fast(x.to(session.device, non_blocking=True)).float()
    net = model.eval().to(session.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(session.device):
            out: torch.Tensor = net(x.to(session.device, non_blocking=True))
        return out.float()

    return run


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 on CUDA GPUs that have it; float32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- line-per-image outputs ---------------------------------------------------------------------


class _Lines:
    """How one record per image is written to and read back from an output file."""

    def __init__(self, fmt: Format, columns: Sequence[str] = ()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        self.columns = list(columns)

    def header(self) -> str:
        return self._csv(self.columns) if self.fmt == "csv" else ""

    def line(self, record: dict[str, Any]) -> str:
        if self.fmt == "jsonl":
            return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        return self._csv([_cell(record.get(c)) for c in self.columns])

    def key(self, line: str) -> str:
        """The image path of a complete line; ValueError when the line is not one of ours."""
        if self.fmt == "jsonl":
            image = json.loads(line).get("image")
            if not isinstance(image, str):
                raise ValueError("no image path")
            return image
        (row,) = csv.reader([line])
        return row[0]

    @staticmethod
    def _csv(cells: Sequence[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _complete_lines(path: Path) -> Iterator[str]:
    """The lines of `path` that end with a newline (a killed writer's last line is dropped)."""
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            if line.endswith("\n"):
                yield line


def _cut_partial_line(path: Path) -> None:
    """Truncate `path` after its last newline: what a run killed mid-write leaves is not half a record."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        step, end = 1 << 16, size
        while end > 0:
            start = max(0, end - step)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                if start + cut + 1 < size:
                    logger.warning("%s: dropped an incomplete last line (%d bytes)", path, size - start - cut - 1)
                    f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


class _Output:
    """OUTPUT and its per-rank parts: preparing (fresh or resumed), writing, merging."""

    def __init__(self, path: Path, lines: _Lines, session: Session) -> None:
        self.path = path
        self.lines = lines
        self.session = session

    def parts(self) -> list[Path]:
        found = self.path.parent.glob(self.path.name + PART + "*")
        return sorted((p for p in found if p.name[len(self.path.name) + len(PART) :].isdigit()), key=_part_number)

    def part(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.name}{PART}{rank}")

    def prepare(self, resume: bool) -> set[str]:
        """Rank 0 readies OUTPUT (emptied, or repaired and joined by old parts); every rank gets what it holds."""
        if self.session.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.exists():
                _cut_partial_line(self.path)
                self._check_header()
            else:
                self.path.write_text(self.lines.header(), encoding="utf-8")
            with open(self.path, "a", encoding="utf-8", newline="") as out:
                for part in self.parts():  # a killed torchrun run's results: kept when resuming
                    if resume:
                        out.writelines(_complete_lines(part))
                    part.unlink()
        self.session.ctx.barrier()
        return self.done() if resume else set()

    def _check_header(self) -> None:
        header = self.lines.header()
        if not header:
            return
        with open(self.path, encoding="utf-8", newline="") as f:
            first = f.readline()
        if not first:
            self.path.write_text(header, encoding="utf-8")
        elif first != header:
            raise ValueError(
                f"{self.path} has the columns {first.strip()!r}, this run writes {header.strip()!r} "
                "(another --topk or format?); resume with the same settings, or write to a new output"
            )

    def done(self) -> set[str]:
        """The images OUTPUT holds a line for (results and errors alike)."""
        held: set[str] = set()
        lines = _complete_lines(self.path)
        if self.lines.header():
            next(lines, None)
        for number, line in enumerate(lines, start=2 if self.lines.header() else 1):
            try:
                held.add(self.lines.key(line))
            except (ValueError, KeyError, AttributeError) as err:
                raise ValueError(
                    f"{self.path}, line {number}: not a {self.lines.fmt} record of this command ({err}); "
                    "resume only into an output this command wrote, or start a new one"
                ) from err
        return held

    @contextlib.contextmanager
    def writer(self) -> Iterator[IO[str]]:
        """This rank's file, opened for appending: OUTPUT itself in one process, else its part."""
        target = self.part(self.session.ctx.rank) if self.session.ctx.on else self.path
        with open(target, "a", encoding="utf-8", newline="", buffering=1) as f:  # a line per image, as it comes
            yield f

    def merge(self, paths: Sequence[str]) -> None:
        """Rank 0 appends the parts to OUTPUT in the order of `paths` (rank r holds paths r, r + world, ...)."""
        ctx = self.session.ctx
        ctx.barrier()
        if not ctx.on or not ctx.main:
            return
        parts = [self.part(r) for r in range(ctx.world)]
        with contextlib.ExitStack() as stack, open(self.path, "a", encoding="utf-8", newline="") as out:
            readers = [
                _Peek(_complete_lines(p), self.lines) if p.exists() else _Peek(iter(()), self.lines) for p in parts
            ]
            for reader in readers:
                stack.callback(reader.close)
            for i, path in enumerate(paths):
                line = readers[i % ctx.world].take(path)
                if line is not None:
                    out.write(line)
        for part in parts:
            part.unlink(missing_ok=True)


def _part_number(path: Path) -> int:
    return int(path.name.rsplit(PART, 1)[1])


class _Peek:
    """The next line of a part, taken only when it is the record of the expected image."""

    def __init__(self, lines: Iterator[str], fmt: _Lines) -> None:
        self.lines = lines
        self.fmt = fmt
        self.head: str | None = next(lines, None)

    def take(self, image: str) -> str | None:
        if self.head is None or self.fmt.key(self.head) != image:
            return None  # held by OUTPUT already (resumed)
        line, self.head = self.head, next(self.lines, None)
        return line

    def close(self) -> None:
        close = getattr(self.lines, "close", None)
        if close is not None:
            close()


# --- predict -------------------------------------------------------------------------------------


@dataclass
class PredictSummary:
    """What a `predict_images` run did, summed over the ranks."""

    output: str
    images: int  # run now, read or not
    failed: int  # could not be read (their lines hold an "error")
    skipped: int  # already in the output (resume)
    seconds: float
    images_per_s: float
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prediction_columns(topk: int) -> list[str]:
    """The CSV columns: image, then label_i, index_i, probability_i for i = 1..topk, then error."""
    ranks = [f"{name}_{i}" for i in range(1, topk + 1) for name in ("label", "index", "probability")]
    return ["image", *ranks, "error"]


def prediction_record(
    image: str, probs: Sequence[float], indices: Sequence[int], categories: Sequence[str]
) -> dict[str, Any]:
    """{"image": path, "predictions": [{"index", "label", "probability"}, ...]}, best first."""
    predictions = [{"index": i, "label": categories[i], "probability": p} for p, i in zip(probs, indices)]
    return {"image": image, "predictions": predictions}


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

    A record is `prediction_record(...)`, or `{"image": path, "error": message}` for an unreadable file.
    `forward`: a `logits_fn(model, session, optimize)` made beforehand (default: made here).
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
        raise ValueError(
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
    format: Format = "jsonl",
    resume: bool = False,
    from_file: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    progress: bool = True,
) -> PredictSummary:
    """Classify every image `sources` names (files, folders, globs, "-"; see `images.list_images`) into `output`.

    One line per image, written as it comes: JSON Lines (`prediction_record`, or an "error" for a file
    that could not be read) or CSV (`prediction_columns`). Under torchrun each rank does its share and
    rank 0 merges; the summary is the same on every rank.
    """
    _check_categories(model, categories, topk)
    lines = _Lines(format, prediction_columns(min(topk, model.num_classes)))
    session = Session(device, batch_size, workers)
    paths: list[str] = session.broadcast(list_images(sources, from_file=from_file) if session.main else None)
    out = _Output(Path(output), lines, session)
    done = out.prepare(resume)
    todo = [i for i in shard(len(paths), session.ctx.rank, session.ctx.world) if paths[i] not in done]
    failed = 0
    forward = logits_fn(model, session, optimize)
    tic = time.perf_counter()
    with out.writer() as f, session.bar(len(todo), "predict", progress) as bar:
        for record in iter_predictions(
            model, preset, paths, categories, session, topk=topk, indices=todo, forward=forward, bar=bar
        ):
            failed += "error" in record
            f.write(lines.line(record if format == "jsonl" else _flat(record)))
        seconds = time.perf_counter() - tic
    out.merge(paths)
    return _summary(session, out.path, len(todo), failed, len(paths), seconds)


def _summary(session: Session, output: Path, ran: int, failed: int, total: int, seconds: float) -> PredictSummary:
    ran_all, failed_all = (int(v) for v in session.sum(torch.tensor([ran, failed], dtype=torch.int64)).tolist())
    seconds = slowest(session, seconds)
    return PredictSummary(
        str(output), ran_all, failed_all, total - ran_all, seconds, ran_all / seconds if seconds else 0.0,
        session.ctx.world,
    )  # fmt: skip


def slowest(session: Session, value: float) -> float:
    """The largest `value` over the ranks: a run lasts as long as its slowest rank."""
    if not session.ctx.on:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    on = t.to(session.device) if dist.get_backend() == "nccl" else t
    dist.all_reduce(on, op=dist.ReduceOp.MAX)
    return float(on.item())


# --- embed ---------------------------------------------------------------------------------------

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
        raise ValueError(f"no layer {layer!r}; valid: {', '.join(model.layer_names())}")
    net = model.eval().to(session.device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(session.device):
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
    index = _Output(folder / INDEX_NAME, _Lines("jsonl"), session)
    done = index.prepare(resume)
    first = session.broadcast(_next_shard(folder, done) if session.main else None)
    todo = [i for i in shard(len(paths), session.ctx.rank, session.ctx.world) if paths[i] not in done]
    rows: list[torch.Tensor] = []  # this shard's rows, at most shard_size of them
    pending: list[dict[str, Any]] = []  # index lines waiting for their shard to be written
    number, failed, dim = first + session.ctx.rank, 0, 0
    tic = time.perf_counter()
    with index.writer() as f, session.bar(len(todo), f"embed {layer}", progress) as bar:
        for batch in session.batches(paths, todo, preset):
            records: dict[int, dict[str, Any]] = {i: {"image": paths[i], "error": msg} for i, msg in batch.errors}
            failed += len(batch.errors)
            if batch.images is not None:
                feats = forward(batch.images).cpu()
                dim = feats.shape[1]
                for i, row in zip(batch.indices, feats):
                    records[i] = {"image": paths[i], "shard": _shard_name(number), "row": len(rows)}
                    rows.append(row)
                    if len(rows) == shard_size:
                        pending += [records.pop(j) for j in sorted(records) if j <= i]
                        _write_shard(folder, number, rows, pending, f)
                        rows, pending, number = [], [], number + session.ctx.world
            pending += [records[j] for j in sorted(records)]
            if not rows:  # only errors wait: nothing to lose
                f.writelines(index.lines.line(r) for r in pending)
                pending = []
            bar.update(len(batch.indices) + len(batch.errors))
        _write_shard(folder, number, rows, pending, f)
        seconds = time.perf_counter() - tic
    index.merge(paths)
    summary = _summary(session, index.path, len(todo), failed, len(paths), seconds)
    dim = int(slowest(session, float(dim)))
    return EmbedSummary(
        str(folder), layer, dim, summary.images, summary.failed, summary.skipped, summary.seconds,
        summary.images_per_s, summary.world_size,
    )  # fmt: skip


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
            raise ValueError(
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
    used = {json.loads(line).get("shard") for line in _complete_lines(folder / INDEX_NAME)}
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
    rows: list[np.ndarray] = []
    shards: dict[str, np.ndarray] = {}
    for line in _complete_lines(folder / INDEX_NAME):
        record = json.loads(line)
        if "shard" not in record:
            continue
        name = record["shard"]
        if name not in shards:
            shards[name] = np.load(folder / name, mmap_mode="r")
        paths.append(record["image"])
        rows.append(np.asarray(shards[name][record["row"]]))
    dim = next(iter(shards.values())).shape[1] if shards else 0
    return paths, np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
