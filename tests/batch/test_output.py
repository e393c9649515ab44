"""Line-per-image outputs (vggnet.batch.output): any path round-trips, nothing is truncated unasked, one writer."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

from tests.helpers import hold_lock, release, write_images
from vggnet.batch.output import Lines, Output, check_fresh
from vggnet.data.distributed import Dist
from vggnet.data.outputs import lock_beside
from vggnet.errors import BadFileError, InUseError, OutputExistsError, OutputPathError, UsageError

# file names a folder may hold: a newline, a carriage return, quotes, commas, a CSV record's end, non-ASCII
ODD_NAMES = ["new\nline.png", 'quote".png', 'comma, and "both",\n.png', "cr\rreturn.png", "plain.png", "ünï.png"]


@pytest.fixture
def odd_files(tmp_path):
    """Real image files so named, and one whose name is not UTF-8 at all; their paths as a folder walk gives them."""
    folder = tmp_path / "odd"
    write_images(folder, ODD_NAMES, size=(8, 8))
    if sys.platform == "linux":
        os.close(os.open(os.fsencode(folder) + b"/\xff\xfe.png", os.O_CREAT | os.O_WRONLY, 0o644))
    return sorted(str(folder / name) for name in os.listdir(folder))


def record(image: str, rank: int) -> dict:
    return {"image": image, "label_1": "cat", "index_1": rank, "probability_1": 0.5, "error": None}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_any_path_round_trips_through_a_killed_run_and_its_resume(tmp_path, odd_files, fmt):
    lines = Lines(fmt, ["image", "label_1", "index_1", "probability_1", "error"])
    path = tmp_path / f"out.{fmt}"
    out = Output(path, lines, Dist())
    assert out.prepare(resume=False) == set()
    half = odd_files[: len(odd_files) // 2]
    with out.writer() as f:
        f.writelines(lines.line(record(p, i)) for i, p in enumerate(half))
        f.write(lines.line(record(odd_files[-1], 9))[:9])  # killed in the middle of a record
    assert out.prepare(resume=True) == set(half)  # every path recognised, the half record cut off
    with out.writer() as f:
        f.writelines(lines.line(record(p, i)) for i, p in enumerate(odd_files) if p not in half)
    assert out.prepare(resume=True) == set(odd_files)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:  # the peer readers agree
        read = [row[0] for row in csv.reader(f)][1:] if fmt == "csv" else [json.loads(line)["image"] for line in f]
    assert read == half + [p for p in odd_files if p not in half]  # each once, in the order written
    if fmt == "jsonl":
        path.read_text(encoding="utf-8")  # valid UTF-8: an undecodable name is escaped, not written raw


def test_an_existing_output_is_never_truncated_unasked(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"image": "a.png"}\n')
    out = Output(path, Lines("jsonl"), Dist())
    with pytest.raises(OutputExistsError, match=r"preds.jsonl already holds 19 bytes; pass resume \(--resume\)"):
        out.prepare(resume=False)
    assert path.read_text() == '{"image": "a.png"}\n'
    assert out.prepare(resume=True) == {"a.png"}
    assert out.prepare(resume=False, overwrite=True) == set() and path.read_text() == ""
    with pytest.raises(UsageError, match="pass one of them"):
        check_fresh(path, resume=True, overwrite=True)
    empty = tmp_path / "made-by-mktemp.jsonl"
    empty.write_text("")
    check_fresh(empty, resume=False, overwrite=False)  # nothing to lose
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_fresh(link, resume=True, overwrite=False)


def test_a_damaged_record_names_the_file_and_line(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text('image,label_1\n"a\nb.png",cat\nc.png,dog\n', encoding="utf-8")
    out = Output(path, Lines("csv", ["image", "label_1"]), Dist())
    assert out.done() == {"a\nb.png", "c.png"}
    path.write_text('image,label_1\n"a\nb.png",cat\n\nc.png,dog\n', encoding="utf-8")  # line 4 holds nothing
    with pytest.raises(BadFileError, match=r"preds.csv, line 4: not a csv record of this command"):
        out.done()
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text('{"image": "a.png"}\n{"image": "b.png"}{"image": "c.png"}\n')
    with pytest.raises(BadFileError, match=r"preds.jsonl, line 2: not a jsonl record of this command \(Extra data"):
        Output(jsonl, Lines("jsonl"), Dist()).done()
    jsonl.write_text('{"image": "a.png"}\n' + "[" * 100_000 + "\n")  # was a RecursionError
    with pytest.raises(BadFileError, match=r"preds.jsonl, line 2: not a jsonl record of this command \(maximum rec"):
        Output(jsonl, Lines("jsonl"), Dist()).done()


def test_one_writer_per_output(tmp_path):
    path = tmp_path / "preds.jsonl"
    holder = hold_lock(lock_beside(path), path)
    try:
        message = rf"preds.jsonl is being written by another .*\(pid {holder.pid} "
        with pytest.raises(InUseError, match=message), Output(path, Lines("jsonl"), Dist()).claimed():
            pass
    finally:
        release(holder)
    with Output(path, Lines("jsonl"), Dist()).claimed():
        assert lock_beside(path).exists()
    assert not lock_beside(path).exists()


def test_a_resumed_output_is_never_a_link_or_another_file_s_second_name(tmp_path):
    victim = tmp_path / "victim.jsonl"
    victim.write_text('{"image": "a.png"}\n{"image": "half')
    twin = tmp_path / "twin.jsonl"
    os.link(victim, twin)  # a hard link: appending to (or cutting) twin would change victim
    with pytest.raises(OutputPathError, match=r"twin.jsonl: it has 2 names \(hard links\)"):
        Output(twin, Lines("jsonl"), Dist()).prepare(resume=True)
    assert victim.read_text() == '{"image": "a.png"}\n{"image": "half'
    assert Output(twin, Lines("jsonl"), Dist()).prepare(resume=False, overwrite=True) == set()  # a new file
    assert victim.read_text() == '{"image": "a.png"}\n{"image": "half' and twin.read_text() == ""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_part_planted_as_a_link_or_a_fifo_is_refused_on_resume_not_read(tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text('{"image": "a.png"}\n')
    (tmp_path / "secret.jsonl").write_text('{"image": "TOP SECRET"}\n')
    (tmp_path / "preds.jsonl.part0").symlink_to(tmp_path / "secret.jsonl")  # its lines went into the output
    with pytest.raises(OutputPathError, match=r"preds.jsonl.part0 back: it is a symbolic link"):
        Output(out, Lines("jsonl"), Dist()).prepare(resume=True)
    assert "SECRET" not in out.read_text()
    (tmp_path / "preds.jsonl.part0").unlink()
    os.mkfifo(tmp_path / "preds.jsonl.part1")  # the resume waited for a writer forever
    with pytest.raises(OutputPathError, match=r"preds.jsonl.part1 back: it is a FIFO"):
        Output(out, Lines("jsonl"), Dist()).prepare(resume=True)


def test_parts_are_found_whatever_the_output_is_called(tmp_path):
    out = Output(tmp_path / "preds[1]*.jsonl", Lines("jsonl"), Dist())
    (tmp_path / "preds[1]*.jsonl.part0").write_text('{"image": "a.png"}\n')
    (tmp_path / "preds1x.jsonl.part1").write_text("")  # what the name as a glob pattern would match
    assert out.parts() == [tmp_path / "preds[1]*.jsonl.part0"]
