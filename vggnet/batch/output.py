"""Line-per-image outputs: one record per image, written as it comes, resumable, merged from torchrun's ranks.

- Results are written as they come, one line per image (JSON Lines, or CSV on request), so memory
  does not grow with the number of images.
- `resume=True` keeps what the output already holds (a truncated last line from a killed run is cut
  off) and runs only the images it lacks.
- Under `torchrun` (WORLD_SIZE > 1) rank r writes `OUTPUT.partR`, and rank 0 merges the parts into
  OUTPUT in the list's order once every rank is done. A part left by a killed run is taken into OUTPUT
  by the next `resume=True` run, whatever its world size.

This module imports nothing from torch: the command line checks `--format` against `FORMATS` at once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vggnet.checks import check_choice
from vggnet.errors import UsageError

if TYPE_CHECKING:
    from vggnet.data.distributed import Dist

__all__ = ["FORMATS", "Lines", "Output", "complete_lines"]

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
PART = ".part"  # OUTPUT.part0, OUTPUT.part1, ...: one per rank until rank 0 merges them


# --- line-per-image outputs ---------------------------------------------------------------------


class Lines:
    """How one record per image is written to and read back from an output file."""

    def __init__(self, fmt: str, columns: Sequence[str] = ()) -> None:
        check_choice("format", fmt, FORMATS)
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
                raise UsageError("no image path")
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


def complete_lines(path: Path) -> Iterator[str]:
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


class Output:
    """OUTPUT and its per-rank parts: preparing (fresh or resumed), writing, merging."""

    def __init__(self, path: Path, lines: Lines, ctx: Dist) -> None:
        self.path = path
        self.lines = lines
        self.ctx = ctx

    def parts(self) -> list[Path]:
        found = self.path.parent.glob(self.path.name + PART + "*")
        return sorted((p for p in found if p.name[len(self.path.name) + len(PART) :].isdigit()), key=_part_number)

    def part(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.name}{PART}{rank}")

    def prepare(self, resume: bool) -> set[str]:
        """Rank 0 readies OUTPUT (emptied, or repaired and joined by old parts); every rank gets what it holds."""
        if self.ctx.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.exists():
                _cut_partial_line(self.path)
                self._check_header()
            else:
                self.path.write_text(self.lines.header(), encoding="utf-8")
            with open(self.path, "a", encoding="utf-8", newline="") as out:
                for part in self.parts():  # a killed torchrun run's results: kept when resuming
                    if resume:
                        out.writelines(complete_lines(part))
                    part.unlink()
        self.ctx.barrier()
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
            raise UsageError(
                f"{self.path} has the columns {first.strip()!r}, this run writes {header.strip()!r} "
                "(another --topk or format?); resume with the same settings, or write to a new output"
            )

    def done(self) -> set[str]:
        """The images OUTPUT holds a line for (results and errors alike)."""
        held: set[str] = set()
        lines = complete_lines(self.path)
        if self.lines.header():
            next(lines, None)
        for number, line in enumerate(lines, start=2 if self.lines.header() else 1):
            try:
                held.add(self.lines.key(line))
            except (ValueError, KeyError, AttributeError) as err:
                raise UsageError(
                    f"{self.path}, line {number}: not a {self.lines.fmt} record of this command ({err}); "
                    "resume only into an output this command wrote, or start a new one"
                ) from err
        return held

    @contextlib.contextmanager
    def writer(self) -> Iterator[IO[str]]:
        """This rank's file, opened for appending: OUTPUT itself in one process, else its part."""
        target = self.part(self.ctx.rank) if self.ctx.on else self.path
        with open(target, "a", encoding="utf-8", newline="", buffering=1) as f:  # a line per image, as it comes
            yield f

    def merge(self, paths: Sequence[str]) -> None:
        """Rank 0 appends the parts to OUTPUT in the order of `paths` (rank r holds paths r, r + world, ...)."""
        ctx = self.ctx
        ctx.barrier()
        if not ctx.on or not ctx.main:
            return
        parts = [self.part(r) for r in range(ctx.world)]
        with contextlib.ExitStack() as stack, open(self.path, "a", encoding="utf-8", newline="") as out:
            readers = [
                _Peek(complete_lines(p), self.lines) if p.exists() else _Peek(iter(()), self.lines) for p in parts
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

    def __init__(self, lines: Iterator[str], fmt: Lines) -> None:
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
