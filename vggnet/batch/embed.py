"""Features of a named tap for every image, in `.npy` shards with an index: `vggnet embed`.

`embed_images` writes `features-NNNNNN.npy` (float32 rows), `index.jsonl` (image -> shard, row, and
the shard's size and SHA-256; or the image's error) and `embed.json` (the settings) into a folder,
resumable, one share per rank under torchrun (the engine: `vggnet.batch.engine`); `read_embeddings`
reads a folder back. A folder is written by one process at a time (`.vggnet.lock`). A shard is written
whole (a temporary file, then a rename) before its index lines; on resume every shard the index
names is checked against its recorded size and digest, and the images of a missing, cut or changed
one are embedded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
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
from vggnet.data.outputs import atomic_write, open_own, write_text, writer_lock
from vggnet.errors import BadFileError, MissingPathError, OutputExistsError, OutputPathError, UsageError
from vggnet.models.vgg import VGG

__all__ = ["EmbedSummary", "embed_images", "features_fn", "read_embeddings"]

logger = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
SETTINGS_NAME = "embed.json"
SHARD_PREFIX = "features-"
LOCK_NAME = ".vggnet.lock"
_SHARD = re.compile(r"features-(\d{6,})\.npy")  # the only names an index may point to: no path, no link out


@dataclass
class EmbedSummary:
    """What an `embed_images` run did, summed over the ranks.

    Attributes:
        out: the folder written.
        layer: the tap the features come from ("fc7", "pool5", ...).
        dim: features per image (0 when no image of this run could be read).
        images: images this run embedded (or tried to: failures included).
        failed: images that could not be read; the index holds their error.
        skipped: images left alone because a resumed folder already held them.
        seconds: the slowest rank's time embedding.
        images_per_s: `images` / `seconds`.
        world_size: how many processes shared the images (1 outside torchrun).
    """

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
        """Give the summary as a JSON-ready dict.

        Returns:
            Field name -> value, as `--json` prints it.
        """
        return asdict(self)


def features_fn(
    model: VGG, layer: str, session: Session, pool: bool, normalize: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Make the function that turns a preprocessed batch into one row of features per image.

    Args:
        model: the network; it is put in eval mode and moved to `session.device`.
        layer: the tap, one of `model.layer_names()` ("fc7", "pool5", "relu5_3", ...).
        session: the run's session: the batch is moved to its device and run there (in bf16 on CUDA GPUs that have it).
        pool: average a (C, H, W) map over H and W, giving C values; without it the map is flattened to
            C*H*W values. A 2-D tap (fc6, fc7) is unchanged.
        normalize: scale each row to unit L2 norm.

    Returns:
        A function from an (N, 3, H, W) batch to (N, D) float32 features.

    Raises:
        UsageError: `layer` is not a layer of the model; the message lists the valid names.
    """
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
    overwrite: bool = False,
    from_file: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Write the features of `layer` for every image into the folder `out`, as `.npy` shards with an index.

    The files (float32 rows in `features-NNNNNN.npy`, `index.jsonl`, `embed.json`), how a killed run resumes
    and how shards are checked: see the module docstring. `read_embeddings(out)` reads the folder back.

    Args:
        model: the network (a features-only record serves).
        preset: the preprocessing of each decoded image (`Loaded.preset`).
        sources: files, folders (their images at any depth), glob patterns and "-" (paths on stdin).
        out: the folder to write; made if missing.
        layer: the tap, one of `model.layer_names()`; default fc7 (4096 values).
        pool: average a (C, H, W) map over H and W (a 4-D tap only).
        normalize: scale each row to unit L2 norm.
        shard_size: rows per .npy file, at least 1.
        resume: embed only the images the index lacks (same layer, pool and normalize, else refused).
        overwrite: replace the embeddings the folder holds.
        from_file: a text file of image paths, one per line.
        batch_size: images per forward pass, per process.
        workers: decoding processes (0: in this process; None: up to 8, from the CPU count).
        device: where the model runs; default CUDA (this process's GPU under torchrun) when available.
        progress: show a progress bar on stderr.

    Returns:
        What was done (counts, feature width, time), summed over the ranks.

    Raises:
        UsageError: `resume` with `overwrite`, an unknown `layer`, or a resumed folder of other settings.
        OutputExistsError: `out` holds embeddings and neither `resume` nor `overwrite` was given.
        OutputPathError: `out` is a file.
        InUseError: another process is writing into `out`.
    """
    check_int("shard_size", shard_size)
    folder = Path(out)
    check_folder(folder, resume=resume, overwrite=overwrite)  # before a worker starts
    session = Session(device, batch_size, workers)
    settings = {"layer": layer, "pool": pool, "normalize": normalize}
    forward = features_fn(model, layer, session, pool, normalize)
    paths: list[str] = session.broadcast(list_images(sources, from_file=from_file) if session.main else None)
    index = Output(folder / INDEX_NAME, Lines("jsonl"), session.ctx)
    claimed = writer_lock(folder / LOCK_NAME, folder) if session.main else contextlib.nullcontext()
    with claimed:
        if session.main:
            _check_settings(folder, settings, resume)
        done = index.prepare(resume, overwrite, repair=_drop_damaged_shards)
        first = session.broadcast(_next_shard(folder) if session.main else None)
        todo = [i for i in shard(len(paths), session.ctx.rank, session.ctx.world) if paths[i] not in done]
        failed, dim, seconds = _embed(
            session, index, forward, paths, todo, preset, first, shard_size, progress, f"embed {layer}"
        )
        index.merge(paths)
    ran, failed, seconds = totals(session, len(todo), failed, seconds)
    dim = int(slowest(session, float(dim)))  # a rank that read no image saw no width
    per_s = ran / seconds if seconds else 0.0
    return EmbedSummary(str(folder), layer, dim, ran, failed, len(paths) - ran, seconds, per_s, session.ctx.world)


def _embed(
    session: Session, index: Output, forward: Callable[[torch.Tensor], torch.Tensor], paths: Sequence[str],
    todo: Sequence[int], preset: nn.Module, first: int, shard_size: int, progress: bool, desc: str,
) -> tuple[int, int, float]:  # fmt: skip
    """This rank's images `todo` into its shards and index lines: (images failed, feature width, seconds)."""
    failed, dim = 0, 0
    tic = time.perf_counter()
    with index.writer() as f, session.bar(len(todo), desc, progress) as bar:
        folder = index.path.parent
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
    return failed, dim, time.perf_counter() - tic


def check_folder(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Whether embeddings may be written into `folder`: refused if it holds some and neither `resume` nor `overwrite`.

    Args:
        folder: the `out` folder.
        resume: continue what it holds.
        overwrite: replace what it holds.

    Raises:
        UsageError: both `resume` and `overwrite`.
        OutputPathError: `folder` is a file.
        OutputExistsError: it holds an index, settings or shards and neither was given.
    """
    if resume and overwrite:
        raise UsageError("resume continues the embeddings in out and overwrite replaces them: pass one of them")
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot write embeddings into {folder}: it is not a folder; name a folder (--out DIR)")
    held = [n for n in (INDEX_NAME, SETTINGS_NAME) if (folder / n).exists()] + [p.name for p in _shard_files(folder)]
    if held and not (resume or overwrite):
        raise OutputExistsError(
            f"{folder} already holds embeddings ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''}); pass "
            "resume (--resume) to embed only the images it lacks, overwrite (--overwrite) to replace them, or "
            "another out (--out)"
        )


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
        """The shard being filled (if it has rows, whole), then the index lines waiting for it, with its digest."""
        if self.rows:
            path = self.folder / _shard_name(self.number)
            with atomic_write(path) as f:
                hashing = _Hashing(f)
                np.save(hashing, torch.stack(self.rows).numpy())
            for record in self.pending:
                if "shard" in record:
                    record |= {"shard_bytes": hashing.size, "shard_sha256": hashing.hasher.hexdigest()}
        self.f.writelines(self.lines.line(r) for r in self.pending)
        self.f.flush()


class _Hashing:
    """A binary file that hashes and counts what is written to it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hasher, self.size = f, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.hasher.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)


def _shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:06d}.npy"


def _shard_files(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(folder / n for n in names if _SHARD.fullmatch(n))


def _check_settings(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    """Resuming with another layer, pooling or normalisation would mix two kinds of rows: refuse."""
    path = folder / SETTINGS_NAME
    if resume and path.exists():
        held = _read_settings(path)
        if held != settings:
            raise UsageError(
                f"{folder} holds embeddings made with {held}, this run asks for {settings}; "
                "resume with the same --layer/--pool/--normalize, or write to another folder"
            )
        return
    if not resume:  # a fresh folder, or overwrite: the old shards go
        for old in _shard_files(folder):
            old.unlink()
    write_text(path, json.dumps(settings) + "\n")


_SETTINGS_MAX = 1 << 16  # bytes: embed.json is a line of JSON; more is not one embed wrote


def _read_settings(path: Path) -> Any:
    try:
        with open_own(path) as f:
            held = json.loads(f.read(_SETTINGS_MAX).decode("utf-8"))
    except OutputPathError:
        raise  # a link or a FIFO planted there: said as such (a ValueError too)
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        held = err
    if not isinstance(held, dict):
        raise BadFileError(
            f"{path}: not the settings vggnet embed writes ({held}); start again with overwrite (--overwrite)"
        )
    return held


def _index_records(index: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each complete line of an index; BadFileError naming the line of a damaged one."""
    for number, line in enumerate(complete_lines(index), start=1):
        try:
            record = json.loads(line)
            problem = "" if isinstance(record, dict) else "not a JSON object"
        except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
            record, problem = {}, str(err)
        name, row = record.get("shard"), record.get("row")
        if not problem and not isinstance(record.get("image"), str):
            problem = "no image path"
        elif not problem and name is not None and not (isinstance(name, str) and _SHARD.fullmatch(name)):
            problem = f"the shard {str(name)[:60]!r} is not a name embed writes (features-NNNNNN.npy)"
        elif not problem and name is not None and not (type(row) is int and row >= 0):  # True is an int, no count
            problem = f"the row {str(row)[:20]!r} is not a count"
        if problem:
            raise BadFileError(
                f"{index}, line {number}: not an index line of vggnet embed ({problem}); "
                "start again with overwrite (--overwrite)"
            )
        yield number, record


def _drop_damaged_shards(index: Path) -> None:
    """Drop the index lines of shards that are missing, cut short or changed: their images are embedded again."""
    folder = index.parent
    recorded: dict[str, tuple[Any, Any]] = {}
    for _, record in _index_records(index):
        if "shard" in record:
            recorded.setdefault(record["shard"], (record.get("shard_bytes"), record.get("shard_sha256")))
    damaged = {name: why for name, (size, digest) in recorded.items() if (why := _damage(folder / name, size, digest))}
    if not damaged:
        return
    for name, why in sorted(damaged.items()):
        logger.warning("%s %s: its images are embedded again", folder / name, why)
    kept = [line for (_, record), line in zip(_index_records(index), complete_lines(index))
            if record.get("shard") not in damaged]  # fmt: skip
    write_text(index, "".join(kept))
    for name in damaged:
        (folder / name).unlink(missing_ok=True)


def _damage(path: Path, size: Any, digest: Any) -> str:
    """What is wrong with a shard against its recorded size and SHA-256 ("" if nothing; old indexes hold neither)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "is missing"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if isinstance(size, int) and st.st_size != size:
        return f"holds {st.st_size:,} bytes where the index says {size:,} (cut short or changed)"
    if isinstance(digest, str):
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                hasher.update(chunk)
        if hasher.hexdigest() != digest:
            return "does not have the SHA-256 the index holds (changed since it was written)"
    return ""


def _next_shard(folder: Path) -> int:
    """The first free shard number; shards no index line points to (a killed run's last ones) are removed."""
    used = {record.get("shard") for _, record in _index_records(folder / INDEX_NAME)}
    numbers = [-1]
    for path in _shard_files(folder):
        if path.name in used:
            numbers.append(int(path.stem[len(SHARD_PREFIX) :]))
        else:
            path.unlink()
    return max(numbers) + 1


def read_embeddings(out: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Read an `embed_images` folder back, in index order; images that failed are left out.

    The rows are copied out of memory-mapped shards; a shard that is missing, a link, or too short for the
    rows the index names is refused.

    Args:
        out: the folder `embed_images` (or `vggnet embed --out`) wrote.

    Returns:
        (image paths, (N, D) float32 array), row i being the features of path i; (N = 0: a (0, 0) array).

    Raises:
        MissingPathError: `out` holds no index.jsonl.
        BadFileError: a line of the index, or a shard, is damaged (the message names the file and line).
    """
    folder = Path(out)
    index = folder / INDEX_NAME
    if not index.is_file():
        raise MissingPathError(f"{folder}: no {INDEX_NAME}; write it with embed_images or `vggnet embed`")
    paths: list[str] = []
    wanted: dict[str, tuple[list[int], list[int]]] = {}  # shard -> (positions in the result, its rows)
    for _, record in _index_records(index):
        if "shard" in record:
            positions, rows = wanted.setdefault(record["shard"], ([], []))
            positions.append(len(paths))
            rows.append(record["row"])
            paths.append(record["image"])
    result: np.ndarray | None = None
    for name, (positions, rows) in wanted.items():
        shard_rows = _open_shard(folder / name, max(rows))  # (rows, D)
        if result is None:
            result = np.empty((len(paths), shard_rows.shape[1]), dtype=shard_rows.dtype)
        elif shard_rows.shape[1:] != result.shape[1:]:
            raise BadFileError(
                f"{folder / name} holds rows of {shard_rows.shape[1]} values, the others {result.shape[1]}"
            )
        result[positions] = shard_rows[rows]
    return paths, result if result is not None else np.zeros((0, 0), dtype=np.float32)


def _open_shard(path: Path, last_row: int) -> np.ndarray:
    """A shard memory-mapped, once it is known to be a 2-D array holding row `last_row`."""
    if not os.path.isfile(path) or os.path.islink(path):
        raise BadFileError(f"{path} is missing or not a regular file (a link?); embed again (--overwrite)")
    try:
        rows: np.ndarray = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise BadFileError(f"{path} cannot be read as a shard of vggnet embed ({err}); embed again") from None
    if rows.ndim != 2 or rows.shape[0] <= last_row:
        raise BadFileError(
            f"{path} holds an array of shape {rows.shape}, the index points to row {last_row}; embed again"
        )
    return rows
