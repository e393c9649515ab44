"""vggnet.hub._partial: the file one download writes into, created private or adopted from a download that died
and resumed from its size, hashed as bytes arrive; and partial files in the cache that are not vggnet's to resume.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._fetching as hub
import vggnet.hub._locks as vlocks
import vggnet.hub._partial as vpartial
from tests.helpers import file_sha256, leftovers, plant_victim

KEY = "0123456789abcdef"


def dead_partial(dest: Path, data: bytes, key: str = KEY) -> Path:
    """The partial file a download of `dest` left when it died, holding `data`."""
    path = vlocks.new_partial(dest, key)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_partial_is_private_flock_held_and_named_for_its_key(tmp_path):
    dest = tmp_path / "m.pth"
    part = vpartial.open_partial(dest, KEY, resume=True, limit=None)  # nothing to resume
    try:
        assert (part.size, part.resumed) == (0, False)
        assert vlocks.partials(dest, KEY + ".") == [part.path]
        assert stat_mode(part.path) == 0o600
        other = os.open(part.path, os.O_RDONLY)
        assert not vlocks.try_flock(other)  # a live download's: not for anyone to claim
        os.close(other)
        part.write(b"abc")
        part.write(b"def")
        part.flush()
        assert part.size == 6 and part.path.read_bytes() == b"abcdef"
        assert part.hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    finally:
        part.close()


def test_the_largest_dead_partial_of_the_same_key_is_resumed(tmp_path):
    dest = tmp_path / "m.pth"
    dead_partial(dest, b"s" * 10)
    big = dead_partial(dest, b"b" * 100)
    dead_partial(dest, b"o" * 200, key="fedcba9876543210")  # another digest's download
    part = vpartial.open_partial(dest, KEY, resume=True, limit=None)
    try:
        assert (part.path, part.size, part.resumed) == (big, 100, True)
        part.write(b"more")
        assert part.hasher.hexdigest() == hashlib.sha256(b"b" * 100 + b"more").hexdigest()  # the prefix is hashed too
    finally:
        part.close()
    fresh = vpartial.open_partial(dest, KEY, resume=False, limit=None)
    fresh.close()
    assert fresh.size == 0 and fresh.path.stat().st_size == 0 and len(vlocks.partials(dest, "")) == 4


def test_a_partial_larger_than_the_limit_is_started_over(tmp_path):
    dest = tmp_path / "m.pth"
    path = dead_partial(dest, b"x" * 100)
    part = vpartial.open_partial(dest, KEY, resume=True, limit=50)
    try:
        assert (part.path, part.size, part.resumed) == (path, 0, False)
        assert path.stat().st_size == 0
    finally:
        part.close()


def test_a_partial_a_live_download_holds_is_not_resumed(tmp_path):
    dest = tmp_path / "m.pth"
    held = dead_partial(dest, b"x" * 100)
    holder = os.open(held, os.O_RDONLY)
    assert vlocks.try_flock(holder)
    try:
        part = vpartial.open_partial(dest, KEY, resume=True, limit=None)
        part.close()
    finally:
        os.close(holder)
    assert part.path != held and part.size == 0 and held.read_bytes() == b"x" * 100


def test_restart_drops_what_was_written_and_its_hash(tmp_path):
    part = vpartial.open_partial(tmp_path / "m.pth", KEY, resume=True, limit=None)
    try:
        part.write(b"bad prefix")
        part.unsized = True
        part.restart()
        assert (part.size, part.resumed, part.unsized) == (0, False, False)
        part.write(b"xy")
        part.flush()
        assert part.path.read_bytes() == b"xy" and part.hasher.hexdigest() == hashlib.sha256(b"xy").hexdigest()
    finally:
        part.close()


class FailingFile:
    """A file whose writes and flushes fail with `code`."""

    def __init__(self, code: int) -> None:
        self.code = code

    def write(self, chunk: bytes) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def flush(self) -> None:
        self.write(b"")

    def close(self) -> None:
        self.write(b"")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO], ids=errno.errorcode.get)
def test_a_full_disk_is_disk_full_and_other_errors_pass_through(tmp_path, code):
    part = vpartial.Partial(tmp_path / "m.pth.partial", FailingFile(code), 0)  # type: ignore[arg-type]
    expected = vpartial.DiskFull if code != errno.EIO else OSError
    try:
        for call in (lambda: part.write(b"abc"), part.flush):
            with pytest.raises(expected) as info:
                call()
            assert (type(info.value) is vpartial.DiskFull) == (code != errno.EIO)
            assert os.strerror(code) in str(info.value)
        assert part.size == 0
    finally:
        part.close()  # a full disk's buffered tail does not fail the close


def test_a_planted_partial_link_is_never_written_through(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    victim, content = plant_victim(tmp_path)
    cache.mkdir()
    planted = cache / f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial"  # the name a resume looks for
    planted.symlink_to(victim)
    path = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert victim.read_bytes() == content and stat_mode(victim) == 0o600  # not appended to, truncated or chmod-ed
    assert not path.is_symlink() and file_sha256(path) == ckpt.sha256
    entries = {e.path.name: e for e in vadmin.cached_files()}
    assert entries[planted.name].kind == "not a regular file" and entries[planted.name].base == ckpt.name
    vadmin.remove_cached(planted.name)  # only the link goes
    assert not os.path.lexists(planted) and victim.read_bytes() == content


def test_a_partial_of_another_user_is_not_resumed(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    planted = cache / f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial"
    planted.write_bytes(ckpt.path.read_bytes()[:1000])
    os.chown(planted, 12345, 12345)  # tests run as root here; someone else's file
    path = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert file_sha256(path) == ckpt.sha256 and path.stat().st_uid == os.geteuid()
    assert http_server.log("/" + ckpt.name)[0].range is None  # started afresh, not from the stranger's bytes


def test_a_planted_hard_link_to_the_users_own_file_is_not_resumed(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    victim, content = plant_victim(tmp_path)  # the user's own file, on the same file system as the cache
    cache.mkdir()
    os.link(victim, cache / f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial")
    assert file_sha256(hub.fetch(url, sha256=ckpt.sha256, progress=False)) == ckpt.sha256
    assert victim.read_bytes() == content and http_server.log("/" + ckpt.name)[0].range is None


def test_ctrl_c_keeps_only_a_partial_file_and_the_next_call_resumes(http_server, cache, monkeypatch):
    data = os.urandom(6 << 20)
    digest = hashlib.sha256(data).hexdigest()
    url = http_server.add("/ctrl-c.bin", data)
    real_write = vpartial.Partial.write

    def interrupted(self, chunk):
        if self.size >= 2 << 20:
            raise KeyboardInterrupt
        real_write(self, chunk)

    monkeypatch.setattr(vpartial.Partial, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(url, sha256=digest, progress=False)
    (partial,) = leftovers(cache)
    assert partial.startswith("ctrl-c.bin.") and partial.endswith(".partial")
    monkeypatch.setattr(vpartial.Partial, "write", real_write)
    assert hub.fetch(url, sha256=digest, progress=False).read_bytes() == data
    assert http_server.log("/ctrl-c.bin")[-1].range == "bytes=2097152-"
    assert leftovers(cache) == ["ctrl-c.bin", "ctrl-c.bin.stamp"]


def test_a_resume_onto_a_bad_prefix_starts_over_in_the_same_call(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    planted = cache / f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial"
    planted.write_bytes(b"\0" * (ckpt.size // 2))  # from an earlier call, but not the file's first bytes
    planted.chmod(0o600)
    path = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert file_sha256(path) == ckpt.sha256
    assert [r.range for r in http_server.log("/" + ckpt.name)] == [f"bytes={ckpt.size // 2}-", None]
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]
