"""vggnet.hub._locks: how partial downloads are named, found and claimed, and the lock held while one process
downloads NAME: waited for while its holder makes progress, given up on when it stalls, never followed
through a planted link.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._fetching as hub
import vggnet.hub._locks as vlocks
from tests.helpers import file_sha256, leftovers, plant_victim, spawn_python

KEY = "0123456789abcdef"


def test_partial_names_are_keyed_by_the_expected_digest(tmp_path):
    assert vlocks.partial_key("ab" * 32) == "ab" * 8
    assert vlocks.partial_key(None) == vlocks.partial_key("") == "unverified"
    dest = tmp_path / "m.pth"
    first, second = vlocks.new_partial(dest, KEY), vlocks.new_partial(dest, KEY)
    assert first != second and first.parent == tmp_path
    assert re.fullmatch(rf"m\.pth\.{KEY}\.[0-9a-f]{{8}}\.partial", first.name)
    assert vadmin._PARTIAL.fullmatch(first.name)  # the name the cache listing takes for a partial


def test_partials_finds_one_downloads_partial_files_by_key(tmp_path):
    dest = tmp_path / "m.pth"
    mine, other = vlocks.new_partial(dest, KEY), vlocks.new_partial(dest, "fedcba9876543210")
    for path in (mine, other, tmp_path / "m.pth.lock", tmp_path / f"n.pth.{KEY}.0a1b2c3d.partial", dest):
        path.write_bytes(b"12345")
    assert vlocks.partials(dest, KEY + ".") == [mine]
    assert sorted(vlocks.partials(dest, "")) == sorted([mine, other])
    assert vlocks.partials(tmp_path / "missing" / "m.pth", "") == []
    assert vlocks.size_or_zero(mine) == 5 and vlocks.size_or_zero(tmp_path / "missing") == 0
    (tmp_path / "link").symlink_to(mine)
    assert vlocks.size_or_zero(tmp_path / "link") == len(str(mine))  # the link's own size, not followed


def test_try_flock_is_exclusive_between_open_files(tmp_path):
    path = tmp_path / "m.pth.lock"
    path.write_bytes(b"")
    first, second = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        assert vlocks.try_flock(first) and not vlocks.try_flock(second)
        os.close(first)
        assert vlocks.try_flock(second)
    finally:
        os.close(second)


def test_claim_takes_a_dead_downloads_partial_but_not_a_live_ones(tmp_path):
    path = vlocks.new_partial(tmp_path / "m.pth", KEY)
    path.write_bytes(b"partial bytes")
    path.chmod(0o600)
    holder = os.open(path, os.O_RDONLY)
    assert vlocks.try_flock(holder)
    assert vlocks.claim(path) is None  # a live download holds it
    os.close(holder)
    claimed = vlocks.claim(path)
    assert claimed is not None
    with claimed:
        assert claimed.read() == b"partial bytes" and claimed.writable()
        other = os.open(path, os.O_RDONLY)
        assert not vlocks.try_flock(other)  # claimed means flock-held
        os.close(other)
    assert vlocks.claim(tmp_path / "gone.partial") is None


def test_claim_refuses_a_link_and_for_writing_a_hard_link_or_a_strangers_file(tmp_path, caplog):
    victim, content = plant_victim(tmp_path)
    link = tmp_path / f"m.pth.{KEY}.0a1b2c3d.partial"
    link.symlink_to(victim)
    hard = tmp_path / f"n.pth.{KEY}.0a1b2c3d.partial"
    os.link(victim, hard)
    with caplog.at_level(logging.WARNING, logger="vggnet.hub._locks"):
        assert vlocks.claim(link) is None
        assert vlocks.claim(hard) is None
    assert "it is a symbolic link" in caplog.text and "it has 2 names (hard links)" in caplog.text
    readable = vlocks.claim(hard, write=False)  # to remove it, reading is enough: taken
    assert readable is not None and not readable.writable()
    readable.close()
    assert victim.read_bytes() == content
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return  # only root can give a file away
    stranger = tmp_path / f"o.pth.{KEY}.0a1b2c3d.partial"
    stranger.write_bytes(b"theirs")
    os.chown(stranger, 12345, 12345)
    with caplog.at_level(logging.WARNING, logger="vggnet.hub._locks"):
        assert vlocks.claim(stranger) is None
    assert "belongs to another user (uid 12345)" in caplog.text


def test_lock_creates_its_folder_and_holds_the_lock_file(tmp_path):
    dest = tmp_path / "new" / "m.pth"
    other = None
    with vlocks.lock(dest):
        other = os.open(tmp_path / "new" / "m.pth.lock", os.O_RDONLY)
        assert not vlocks.try_flock(other)
    try:
        assert vlocks.try_flock(other)  # released on leaving
    finally:
        os.close(other)
    with vlocks.lock(tmp_path / "absent" / "m.pth", create=False):
        pass
    assert not (tmp_path / "absent").exists()


@contextlib.contextmanager
def held(path: Path, seconds: float = 60.0) -> Iterator[None]:
    """The flock on `path` held from a thread, as another process would, for `seconds` or until the block ends."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        assert vlocks.try_flock(fd)
        taken.set()
        release.wait(seconds)
        os.close(fd)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_a_lock_is_waited_for_until_its_holder_lets_go(tmp_path, caplog):
    dest = tmp_path / "m.pth"
    with held(tmp_path / "m.pth.lock", seconds=0.5):
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="vggnet.hub._locks"), vlocks.lock(dest):
            waited = time.monotonic() - started
            other = os.open(tmp_path / "m.pth.lock", os.O_RDONLY)
            assert not vlocks.try_flock(other)  # ours now
            os.close(other)
    assert 0.3 < waited < vlocks.LOCK_STALL
    assert f"waiting for another process to finish {dest}" in caplog.text
    assert "made no progress" not in caplog.text


def test_a_stalled_holder_is_given_up_on_with_a_warning_naming_the_lock(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(vlocks, "LOCK_STALL", 0.3)
    dest = tmp_path / "m.pth"
    with held(tmp_path / "m.pth.lock"):
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="vggnet.hub._locks"), vlocks.lock(dest):
            waited = time.monotonic() - started
    assert 0.3 <= waited < 5
    assert f"the process holding {dest}.lock made no progress for 0 s; going on" in caplog.text


def test_a_holder_whose_partial_grows_is_waited_for_past_lock_stall(tmp_path, monkeypatch):
    monkeypatch.setattr(vlocks, "LOCK_STALL", 0.4)
    dest = tmp_path / "m.pth"
    partial = vlocks.new_partial(dest, KEY)

    def download() -> None:  # 1.5 s of progress, then a stall
        with open(partial, "wb") as f:
            for _ in range(15):
                f.write(b"x" * 1000)
                f.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=download, daemon=True)
    with held(tmp_path / "m.pth.lock"):
        started = time.monotonic()
        writer.start()
        with vlocks.lock(dest):
            waited = time.monotonic() - started
        writer.join()
    assert 1.4 < waited < 6  # not given up on while bytes arrived; given up on once they stopped


@pytest.mark.parametrize("where", ["folder is a file", "lock is a FIFO"])
def test_where_no_lock_can_be_taken_the_work_goes_on_without_one(tmp_path, caplog, where):
    if where == "folder is a file":
        (tmp_path / "cache").write_bytes(b"")
    else:
        (tmp_path / "cache").mkdir()
        os.mkfifo(tmp_path / "cache" / "m.pth.lock")
    ran = False
    with caplog.at_level(logging.WARNING, logger="vggnet.hub._locks"), vlocks.lock(tmp_path / "cache" / "m.pth"):
        ran = True
    assert ran and f"cannot lock {tmp_path / 'cache' / 'm.pth'}" in caplog.text
    assert "going on without the lock" in caplog.text


def test_a_live_but_stuck_lock_holder_is_not_waited_for_forever(http_server, small_checkpoints, cache, monkeypatch):
    monkeypatch.setattr(vlocks, "LOCK_STALL", 0.5)
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    with filelock.FileLock(str(cache / ckpt.name) + ".lock"):  # another holder that never finishes
        assert file_sha256(hub.fetch(url, progress=False)) == ckpt.sha256


def test_a_planted_lock_link_is_not_truncated(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    victim, content = plant_victim(tmp_path)
    cache.mkdir()
    (cache / f"{ckpt.name}.lock").symlink_to(victim)
    assert file_sha256(hub.fetch(url, sha256=ckpt.sha256, progress=False)) == ckpt.sha256
    assert victim.read_bytes() == content


WORKER = r"""
import json, sys, time
from collections.abc import Iterator
from pathlib import Path
import vggnet.hub._fetching as hub
from vggnet.models.weights import Weights
from tests.helpers import fingerprint
url, sha256, size, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
state = Weights(url=url, sha256=sha256, size=int(size)).get_state_dict(progress=False)
print(json.dumps({"fingerprint": fingerprint(state), "keys": len(state)}))
"""


@pytest.mark.slow  # four processes importing torch and loading 528 MB each; test_cache_admin keeps a live process quick
def test_concurrent_processes_download_once(http_server, vgg16_checkpoints, cache, tmp_path):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, rate=400e6)  # ~1.4 s: long enough for every process to collide
    go = tmp_path / "go"
    workers = [spawn_python(WORKER, url, ckpt.sha256, ckpt.size, tmp_path / f"ready{i}", go) for i in range(4)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()  # all four start at once
    results = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["fingerprint"] == vgg16_checkpoints.fingerprint
    assert http_server.count(path) == 1
    assert http_server.bytes_served(path) == ckpt.size
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]
