"""Line-per-image outputs: one record per image, written as it comes, resumable, merged from torchrun's ranks.

- Results are written as they come, one line per image (JSON Lines, or CSV on request), so memory
  does not grow with the number of images. A record is complete when its newline is written: a CSV
  path holding a newline is quoted and spans lines, a JSON one is escaped; both read back as written,
  whatever bytes the path holds.
- An output that holds something is started again only with `overwrite=True` (replaced whole, as
  `vggnet.data.outputs.atomic_write` writes), continued only with `resume=True`, never truncated.
- `resume=True` keeps what the output already holds (a truncated last record from a killed run is cut
  off) and runs only the images it lacks.
- One writer per output: `Output.claimed()` holds `.OUTPUT.lock` (the holder is named to a second one).
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vggnet.checks import check_choice
from vggnet.data.outputs import check_output, lock_beside, open_append, open_own, write_text, writer_lock
from vggnet.errors import BadFileError, OutputExistsError, UsageError

if TYPE_CHECKING:
    from vggnet.data.distributed import Dist

__all__ = ["FORMATS", "Lines", "Output", "check_fresh", "complete_lines", "records"]

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
PART = ".part"  # OUTPUT.part0, OUTPUT.part1, ...: one per rank until rank 0 merges them


# --- line-per-image outputs ---------------------------------------------------------------------


class Lines:
    """How one record per image is written to and read back from an output file.

    Args:
        fmt: "jsonl" (one JSON object per line) or "csv" (a header row, then one row per image).
        columns: the CSV columns, in order; the first is the image path, which `key` reads back.
            Unused for JSON Lines.

    Raises:
        UsageError: `fmt` is not one of `FORMATS`.
    """

    def __init__(self, fmt: str, columns: Sequence[str] = ()) -> None:
        check_choice("format", fmt, FORMATS)
        self.fmt = fmt
        self.columns = list(columns)

    def header(self) -> str:
        """Give the text an output starts with.

        Returns:
            The CSV header row with its newline; "" for JSON Lines, which has none.
        """
        return self._csv(self.columns) if self.fmt == "csv" else ""

    def line(self, record: dict[str, Any]) -> str:
        """Format one image's record as the text to append.

        Args:
            record: the image's fields ("image" and the results, or "error"); CSV writes the `columns` only, an
                absent one as an empty cell and floats to 6 significant digits.

        Returns:
            The record with its newline: a JSON object kept as UTF-8 (a path with bytes that are not UTF-8 is
                escaped instead), or a CSV row, quoted where a field holds a newline or a carriage return.
        """
        if self.fmt == "jsonl":
            text = json.dumps(record, ensure_ascii=False, allow_nan=False)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a path with undecodable bytes: escaped (\udcff), read back as it was
                text = json.dumps(record, allow_nan=False)
            return text + "\n"
        return self._csv([_cell(record.get(c)) for c in self.columns])

    def key(self, line: str) -> str:
        """Read back the image path of a complete record, so that a resumed run skips that image.

        Args:
            line: one record as `records` yields it.

        Returns:
            The image path, exactly as it was written.

        Raises:
            UsageError: a JSON record without a string "image" (not a record of this command). Text that is not
                JSON or CSV raises the parser's ValueError (`Output.done` turns both into a BadFileError).
        """
        if self.fmt == "jsonl":
            image = json.loads(line).get("image")
            if not isinstance(image, str):
                raise UsageError("no image path")
            return image
        return next(csv.reader(io.StringIO(line, newline="")))[0]

    def records(self, path: Path) -> Iterator[str]:
        """Read the complete records of an output; a killed writer's unfinished last record is left out.

        Args:
            path: an output file in this format.

        Returns:
            An iterator over the records, each with its newline (a CSV record may span lines when a path holds a
                newline); the header row of a CSV output is the first.
        """
        return (text for text, _ in records(path, quoted=self.fmt == "csv"))

    @staticmethod
    def _csv(cells: Sequence[str]) -> str:
        buf = io.StringIO()
        # a lone "\r" is no line terminator to the writer, but ends a line for every reader: quote that row
        if any("\r" in cell for cell in cells):
            csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(cells)
        else:
            csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def records(path: Path, *, quoted: bool) -> Iterator[tuple[str, int]]:
    """Each complete record of `path`, and the byte offset just past it; a killed writer's last half is left out.

    A record ends with a newline; with `quoted` (CSV) only a newline outside quotes, which is where an
    even number of quotes has been seen (a quote inside a field is doubled). Bytes that are not UTF-8
    (a file name's) come back as the surrogates Python names them with.

    Args:
        path: a JSON Lines or CSV output.
        quoted: CSV: a quoted field may hold newlines.

    Yields:
        (record with its newline, byte offset after it).
    """
    with open_own(path) as f:
        pending: list[bytes] = []
        quotes = offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            pending.append(line)
            quotes += line.count(b'"') if quoted else 0
            if quotes % 2 == 0:
                yield b"".join(pending).decode("utf-8", "surrogateescape"), offset
                pending, quotes = [], 0


def complete_lines(path: Path) -> Iterator[str]:
    """The lines of `path` that end with a newline (a killed writer's last line is dropped); JSON Lines.

    Args:
        path: a JSON Lines file.

    Returns:
        Its complete lines, each with its newline.
    """
    return (text for text, _ in records(path, quoted=False))


def _cut_partial_record(path: Path, quoted: bool) -> None:
    """Truncate `path` after its last complete record: what a run killed mid-write leaves is not half a record."""
    end = max((offset for _, offset in records(path, quoted=quoted)), default=0)
    size = path.stat().st_size
    if end < size:
        logger.warning("%s: dropped an incomplete last record (%d bytes)", path, size - end)
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.ftruncate(fd, end)
        finally:
            os.close(fd)


def check_fresh(path: Path, *, resume: bool, overwrite: bool) -> None:
    """Whether `path` may be written: OutputExistsError if it holds something and neither `resume` nor `overwrite`.

    Args:
        path: the output file.
        resume: keep what it holds and add to it.
        overwrite: replace what it holds.

    Raises:
        UsageError: both `resume` and `overwrite`.
        OutputPathError: `path` is a folder, a link or another thing that is not a file.
        OutputExistsError: `path` holds something and neither was given; an empty file may be written.
    """
    if resume and overwrite:
        raise UsageError("resume keeps what the output holds and overwrite replaces it: pass one of them")
    check_output(path)
    if resume or overwrite:
        return
    with contextlib.suppress(FileNotFoundError):
        size = path.stat().st_size
        if size:
            raise OutputExistsError(
                f"{path} already holds {size:,} bytes; pass resume (--resume) to add only what it lacks, "
                "overwrite (--overwrite) to replace it, or write to another file"
            )


class Output:
    """OUTPUT and its per-rank parts under torchrun: claiming, preparing (fresh or resumed), writing, merging.

    Args:
        path: the output file (OUTPUT); under torchrun rank r writes OUTPUT.partR beside it.
        lines: how its records are written and read.
        ctx: this process's place in the run (rank, world size, barriers); one process alone is rank 0 of 1.
    """

    def __init__(self, path: Path, lines: Lines, ctx: Dist) -> None:
        self.path = path
        self.lines = lines
        self.ctx = ctx

    def parts(self) -> list[Path]:
        """List the per-rank parts (OUTPUT.part0, OUTPUT.part1, ...) beside OUTPUT, a killed run's included.

        Returns:
            Their paths, in rank order; empty when there are none (or OUTPUT's folder does not exist).
        """
        prefix = self.path.name + PART  # listed, not globbed: the name may hold [ or *
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        found = [self.path.with_name(n) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]
        return sorted(found, key=_part_number)

    def part(self, rank: int) -> Path:
        """Name the part a rank writes under torchrun.

        Args:
            rank: the process's rank.

        Returns:
            OUTPUT.part<rank>, beside OUTPUT.
        """
        return self.path.with_name(f"{self.path.name}{PART}{rank}")

    def claimed(self) -> contextlib.AbstractContextManager[None]:
        """Hold OUTPUT's lock (`.OUTPUT.lock`) on rank 0 for the whole run: one writer per output.

        Returns:
            A context manager; entering it on rank 0 raises `InUseError` naming the process that holds the lock.
                Other ranks hold nothing (rank 0 speaks for the run).
        """
        return writer_lock(lock_beside(self.path), self.path) if self.ctx.main else contextlib.nullcontext()

    def prepare(self, resume: bool, overwrite: bool = False, repair: Callable[[Path], None] | None = None) -> set[str]:
        """Ready OUTPUT on rank 0 (fresh, or resumed with a killed run's parts); every rank learns what it holds.

        Args:
            resume: keep what OUTPUT holds: a truncated last record is cut off, the CSV header checked, old parts'
                records appended. Without it OUTPUT is written afresh (the header only) and old parts are deleted.
            overwrite: replace what OUTPUT holds; without it (or `resume`) an OUTPUT holding something is refused
                (`check_fresh`).
            repair: run on rank 0 with OUTPUT's path once a resumed OUTPUT is whole, before its records are read.

        Returns:
            The images OUTPUT already holds a record for (results and errors), to be skipped; empty for a fresh run.
        """
        if self.ctx.main:
            check_fresh(self.path, resume=resume, overwrite=overwrite)
            if resume and self.path.exists():
                open_append(self.path).close()  # a file of one name, never a link: it is cut and appended to
                _cut_partial_record(self.path, self.lines.fmt == "csv")
                self._check_header()
            else:
                write_text(self.path, self.lines.header())  # replaced whole, never through a link
            with open_append(self.path) as out:
                for part in self.parts():  # a killed torchrun run's results: kept when resuming
                    if resume:
                        out.writelines(self.lines.records(part))
                    part.unlink()
            if resume and repair is not None:
                repair(self.path)
        self.ctx.barrier()
        return self.done() if resume else set()

    def _check_header(self) -> None:
        header = self.lines.header()
        if not header:
            return
        first = next(self.lines.records(self.path), "")
        if not first:
            write_text(self.path, header)
        elif first != header:
            raise UsageError(
                f"{self.path} has the columns {first.strip()!r}, this run writes {header.strip()!r} "
                "(another --topk or format?); resume with the same settings, or write to a new output"
            )

    def done(self) -> set[str]:
        """Read which images OUTPUT holds a record for (results and errors alike).

        Returns:
            Their paths, as written.

        Raises:
            BadFileError: a record is not one this command writes (a file another tool wrote, or damaged); the
                message names the line and says to resume only into this command's output or to --overwrite.
        """
        held: set[str] = set()
        number = 1  # the line a record starts on (a CSV record may span lines)
        for index, text in enumerate(self.lines.records(self.path)):
            if index or not self.lines.header():
                try:
                    held.add(self.lines.key(text))
                except (ValueError, KeyError, AttributeError, StopIteration, IndexError, RecursionError) as err:
                    raise BadFileError(
                        f"{self.path}, line {number}: not a {self.lines.fmt} record of this command ({err}); "
                        "resume only into an output this command wrote, or start again (--overwrite)"
                    ) from None
            number += text.count("\n")
        return held

    @contextlib.contextmanager
    def writer(self) -> Iterator[IO[str]]:
        """Open this rank's file for appending, one record per image as it comes.

        Yields:
            OUTPUT itself in one process, else this rank's part; opened without following a link and closed on exit.
        """
        target = self.part(self.ctx.rank) if self.ctx.on else self.path
        with open_append(target) as f:  # a line per image, as it comes
            yield f

    def merge(self, paths: Sequence[str]) -> None:
        """Append the ranks' parts to OUTPUT on rank 0, in the order of the image list, and delete them.

        Every rank waits at a barrier first; in one process nothing is done (the records went to OUTPUT).

        Args:
            paths: the image list every rank was given, in order (rank r ran paths r, r + world, ...); an image a
                part lacks is already in OUTPUT (resumed) and is skipped.
        """
        ctx = self.ctx
        ctx.barrier()
        if not ctx.on or not ctx.main:
            return
        parts = [self.part(r) for r in range(ctx.world)]
        with contextlib.ExitStack() as stack, open_append(self.path) as out:
            readers = [
                _Peek(self.lines.records(p), self.lines) if p.exists() else _Peek(iter(()), self.lines) for p in parts
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
