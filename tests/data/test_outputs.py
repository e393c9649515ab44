"""Files the commands write (vggnet.data.outputs): whole or not at all, never through a link, one writer at a time."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from tests.helpers import ROOT, hold_lock, plant_victim, release
from vggnet.data import outputs
from vggnet.data.outputs import (
    atomic_write,
    check_output,
    lock_beside,
    open_append,
    open_own,
    remove_leftovers,
    save_png,
    write_text,
    writer_lock,
)
from vggnet.errors import EXIT_FAILURE, EXIT_USAGE, DiskError, InUseError, OutputPathError, exit_code


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out" / "report.txt"  # the folder is made
    write_text(path, "first\n")
    path.chmod(0o640)
    with pytest.raises(RuntimeError, match="the writer failed"), atomic_write(path) as f:
        f.write(b"half of the second")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "first\n" and os.listdir(path.parent) == ["report.txt"]  # no temporary file left
    write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # a private file stays private
    assert os.listdir(path.parent) == ["report.txt"]


def test_a_link_at_the_destination_is_refused_and_never_written_through(tmp_path):
    victim, content = plant_victim(tmp_path)
    link = tmp_path / "curves.png"
    link.symlink_to(victim)
    for write in (lambda: write_text(link, "x"), lambda: save_png(object(), link), lambda: open_append(link)):
        with pytest.raises(OutputPathError, match=r"curves.png: it is a symbolic link; vggnet never writes through"):
            write()
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "elsewhere" / "created.onnx")
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_text(dangling, "x")
    assert victim.read_bytes() == content and not (tmp_path / "elsewhere").exists()


def test_a_folder_or_a_fifo_is_a_usage_error_and_an_unwritable_place_a_failure(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(OutputPathError, match=r"model.onnx: it is a folder; name the file to write in it") as err:
        write_text(tmp_path / "model.onnx", "x")
    assert exit_code(err.value) == EXIT_USAGE
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputPathError, match="it is a FIFO"):
        check_output(tmp_path / "fifo")
    (tmp_path / "file").write_text("")
    for below in (tmp_path / "file" / "below.txt", tmp_path / "file" / "deeper" / "below.txt"):
        with pytest.raises(OutputPathError, match=r"\(or a folder above it\) is a file, not a folder"):
            write_text(below, "x")
    if sys.platform != "linux":
        pytest.skip("needs a place no one may write to: Linux's /sys refuses new files even to root")
    with pytest.raises(DiskError, match=r"cannot write /sys/vggnet.txt: [^;]+; nothing was written there") as err:
        write_text("/sys/vggnet.txt", "x")
    assert exit_code(err.value) == EXIT_FAILURE


def test_one_writer_at_a_time_and_the_second_is_told_who(tmp_path):
    out = tmp_path / "preds.jsonl"
    holder = hold_lock(lock_beside(out), out)  # a real process
    try:
        with (
            pytest.raises(
                InUseError, match=rf"preds.jsonl is being written by another vggnet process \(pid {holder.pid} on "
            ) as err,
            writer_lock(lock_beside(out), out),
        ):
            pass
        assert exit_code(err.value) == EXIT_FAILURE and "\n" not in str(err.value)
    finally:
        release(holder)
    assert not lock_beside(out).exists()  # removed by its holder
    with writer_lock(lock_beside(out), out):
        assert f"pid {os.getpid()} on " in lock_beside(out).read_text()
    assert not lock_beside(out).exists()


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    holder = hold_lock(out / ".vggnet.lock", out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (out / ".vggnet.lock").exists()  # left behind, but no longer locked
    with writer_lock(out / ".vggnet.lock", out):
        pass


SAVE_FOREVER = """
import sys
from pathlib import Path
from vggnet.data.outputs import atomic_write
while True:
    with atomic_write(Path(sys.argv[1])) as f:
        for _ in range(64):
            f.write(b"x" * (1 << 20))
"""


def test_what_a_writer_killed_mid_save_leaves_is_found_and_removed(tmp_path):
    path = tmp_path / "last.pth"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], cwd=ROOT, env=dict(os.environ))
    try:
        while not [n for n in os.listdir(tmp_path) if n.startswith(".last.pth.")]:
            assert proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert temps and all(n.startswith(".last.pth.") for n in temps)
    (tmp_path / ".notes.txt.1234.tmp").write_text("someone else's")
    assert remove_leftovers(tmp_path, ["last.pth", "best.pth"]) == sorted(temps)
    assert sorted(os.listdir(tmp_path)) == sorted({".notes.txt.1234.tmp", *(["last.pth"] if path.exists() else [])})


def test_a_lock_file_planted_as_a_link_or_a_fifo_is_refused(tmp_path):
    victim, content = plant_victim(tmp_path)
    out = tmp_path / "preds.jsonl"
    lock_beside(out).symlink_to(victim)
    with (
        pytest.raises(OutputPathError, match=r"\.preds\.jsonl\.lock: it is a symbolic link"),
        writer_lock(lock_beside(out), out),
    ):
        pass
    assert victim.read_bytes() == content
    lock_beside(out).unlink()
    os.mkfifo(lock_beside(out))
    with pytest.raises(OutputPathError, match="it is a FIFO"), writer_lock(lock_beside(out), out):
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_file_read_back_is_never_a_link_followed_nor_a_fifo_waited_on(tmp_path):
    (tmp_path / "own.jsonl").write_text("mine\n")
    with open_own(tmp_path / "own.jsonl") as f:
        assert f.read() == b"mine\n"
    (tmp_path / "secret.txt").write_text("not yours\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "secret.txt")
    os.mkfifo(tmp_path / "fifo.jsonl")  # no writer: a plain open waits for one forever
    for name, what in (("link.jsonl", "a symbolic link"), ("fifo.jsonl", "a FIFO")):
        with pytest.raises(OutputPathError, match=f"cannot read .*{name} back: it is {what}, not a file vggnet wrote"):
            open_own(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        open_own(tmp_path / "none.jsonl")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_another_users_file_or_a_link_planted_at_the_destination_lends_it_no_mode(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text("theirs\n")
    path.chmod(0o666)
    os.chown(path, 65534, 65534)  # a co-tenant's world-writable file, in a folder both may write to
    old = os.umask(0o022)
    try:
        write_text(path, "mine\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.stat().st_uid == os.geteuid()
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere")  # a link swapped in after the check: its bits read 0777
        with atomic_write(tmp_path / "other.csv") as f:
            outputs._keep_mode(f.fileno(), path)
        assert stat.S_IMODE((tmp_path / "other.csv").stat().st_mode) == 0o644  # was made world-writable
    finally:
        os.umask(old)
