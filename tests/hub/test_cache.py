"""vggnet.hub._cache: the cache folder, its stamps, and the integrity checks that move a bad copy aside, with real
files and a real HTTP server on loopback.

Listing and removal are test_cache_admin.py's, locks test_locks.py's, partial files test_partial.py's, and
how a name is opened (never through a link, never a FIFO) test_files.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._cache as vcache
import vggnet.hub._fetching as hub
from tests.helpers import file_sha256, fingerprint, no_hashing, record
from tests.server import Fault
from vggnet import errors


def test_without_vggnet_home_the_cache_is_torch_hubs(_isolated_cache):
    assert vcache.cache_dir() == _isolated_cache / "hub" / "checkpoints"


def test_a_cache_hit_trusts_its_stamp(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    record(url, ckpt).get_state_dict(progress=False)
    stamp = json.loads((cache / (ckpt.name + ".stamp")).read_text())
    assert stamp["sha256"] == ckpt.sha256 and stamp["size"] == ckpt.size
    monkeypatch.setattr(vcache, "hash_file", no_hashing)
    record(url, ckpt).get_state_dict(progress=False)
    assert http_server.count("/" + ckpt.name) == 1


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_flipped_byte_is_detected_moved_aside_and_fetched_again(http_server, small_checkpoints, cache, monkeypatch,
                                                                  offline):  # fmt: skip
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    record(url, ckpt).get_state_dict(progress=False)
    cached = cache / ckpt.name
    before = cached.stat()
    with open(cached, "r+b") as f:  # flip one byte in the middle, then restore the mtime
        f.seek(ckpt.size // 2)
        byte = f.read(1)
        f.seek(ckpt.size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(cached, ns=(before.st_atime_ns, before.st_mtime_ns))
    if offline:
        monkeypatch.setenv("VGGNET_OFFLINE", "1")
        with pytest.raises(errors.ChecksumError, match="moved aside"):
            record(url, ckpt).get_state_dict(progress=False)
        assert not cached.exists()
    else:
        state = record(url, ckpt).get_state_dict(progress=False)
        assert fingerprint(state) == small_checkpoints.fingerprint
        assert http_server.count("/" + ckpt.name) == 2
        assert file_sha256(cached) == ckpt.sha256
    (aside,) = cache.glob(ckpt.name + ".corrupt-*")
    assert file_sha256(aside) != ckpt.sha256


def test_offline_a_corrupt_cached_file_does_not_say_retry(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    weights = record(url, ckpt)
    weights.get_state_dict(progress=False)
    (cache / ckpt.name).write_bytes(b"x" * ckpt.size)
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(errors.ChecksumError) as info:
        weights.get_state_dict(progress=False)
    assert "retry" not in str(info.value) and "Unset VGGNET_OFFLINE" in str(info.value)


def test_verify_file_hashes_afresh_and_reports_progress(small_checkpoints, tmp_path):
    ckpt = small_checkpoints.zip
    path = tmp_path / ckpt.name
    path.write_bytes(ckpt.path.read_bytes())
    seen: list[int] = []
    assert vcache.verify_file(path, ckpt.sha256[:8], progress=seen.append) == ckpt.sha256
    assert sum(seen) == ckpt.size and vcache.verify_file(str(path)) == ckpt.sha256
    assert not (tmp_path / f"{ckpt.name}.stamp").exists()  # nothing written

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    vcache.write_stamp(path, ckpt.sha256, checked=True, st=path.stat())  # fits the stat, not the bytes
    assert vcache.stamped_digest(path) == ckpt.sha256
    with pytest.raises(errors.ChecksumError) as caught:
        vcache.verify_file(path, ckpt.sha256)
    assert (caught.value.expected, caught.value.actual) == (ckpt.sha256, hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data and vcache.stamped_digest(path) == ckpt.sha256  # left as it was


def test_a_download_without_any_digest_is_stamped_unchecked(http_server, small_checkpoints, cache):
    """Without a digest and without Content-Length, a transfer cut short looks complete: its stamp must not vouch."""
    data = small_checkpoints.zip.path.read_bytes()
    url = http_server.add("/plain.pth", data[: len(data) // 2], Fault.extra(b"", announce=False))
    hub.fetch(url, progress=False)
    (entry,) = vadmin.cached_files()
    assert entry.sha256 == hashlib.sha256(data[: len(data) // 2]).hexdigest() and entry.checked is False

    ckpt = small_checkpoints.zip
    url = http_server.add("/checked.pth", ckpt.path)
    hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert {e.path.name: e.checked for e in vadmin.cached_files()} == {"checked.pth": True, "plain.pth": False}


def test_a_stamp_is_marked_checked_once_a_digest_confirms_it(small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    cache.mkdir()
    shutil.copyfile(ckpt.path, cache / "mine.pth")
    hub.fetch("https://example.invalid/mine.pth", progress=False)  # a cache hit, hashed and stamped unchecked
    assert vadmin.cached_files()[0].checked is False
    hub.fetch("https://example.invalid/mine.pth", sha256=ckpt.sha256[:8], progress=False)
    assert vadmin.cached_files()[0].checked is True


def test_marking_a_stamp_checked_never_vouches_for_a_file_swapped_in_meanwhile(small_checkpoints, cache, monkeypatch):
    """The rewrite of an unchecked stamp describes the file that was matched, not whatever the name holds by then."""
    ckpt = small_checkpoints.zip
    cache.mkdir()
    dest = cache / "mine.pth"
    shutil.copyfile(ckpt.path, dest)
    hub.fetch("https://example.invalid/mine.pth", progress=False)  # hashed and stamped, unchecked
    other = cache / ".other"
    other.write_bytes(b"not the verified bytes")
    matches = vcache.stamp_matches

    def swap_after_the_match(stamp, st):  # a co-tenant's rename lands between the match and the rewrite
        found = matches(stamp, st)
        os.replace(other, dest)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vcache, "stamp_matches", swap_after_the_match)
        assert vcache.stamped_digest(dest, expected=ckpt.sha256) == file_sha256(ckpt.path)
    assert vcache.stamped_digest(dest, expected=ckpt.sha256) is None  # the stamp does not describe the new file
    monkeypatch.setenv(vcache.ENV_OFFLINE, "1")
    with pytest.raises(errors.ChecksumError, match="moved aside"):  # hashed, refused, set aside
        hub.fetch("https://example.invalid/mine.pth", sha256=ckpt.sha256, progress=False)


def test_vggnet_home_that_is_a_file_is_named_in_the_error(http_server, small_checkpoints, tmp_path, monkeypatch):
    home = tmp_path / "a-file"
    home.write_bytes(b"")
    monkeypatch.setenv("VGGNET_HOME", str(home))
    url = http_server.add("/" + small_checkpoints.zip.name, small_checkpoints.zip.path)
    for offline in ("", "1"):
        monkeypatch.setenv("VGGNET_OFFLINE", offline)
        with pytest.raises(OSError, match=f"VGGNET_HOME={home}.*not a directory.*must be a writable directory"):
            hub.fetch(url, progress=False)
    assert http_server.count("/" + small_checkpoints.zip.name) == 0


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be written into: by its mode, or (for root) a read-only bind mount."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    mounted = False
    if os.access(folder, os.W_OK):  # root ignores the mode
        mount = ["mount", "--bind", str(folder), str(folder)]
        remount = ["mount", "-o", "remount,bind,ro", str(folder)]
        try:
            subprocess.run(mount, check=True, capture_output=True)
            mounted = True
            subprocess.run(remount, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            if mounted:
                subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot make a read-only directory here")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)
        folder.chmod(0o755)


def test_a_read_only_cache_is_named_in_the_error(http_server, small_checkpoints, read_only_dir, monkeypatch):
    monkeypatch.setenv("VGGNET_HOME", str(read_only_dir))
    url = http_server.add("/" + small_checkpoints.zip.name, small_checkpoints.zip.path)
    with pytest.raises(OSError, match=f"VGGNET_HOME={read_only_dir}.*must be a writable directory") as info:
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert "[Errno" not in str(info.value)


# --- issue 11: the cache never follows or trusts what it did not create ------------------------------


def test_a_planted_link_in_place_of_the_checkpoint_is_set_aside(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    fake = tmp_path / "fake.pth"
    shutil.copyfile(ckpt.path, fake)  # the right bytes today, but the attacker's file: it can change any time
    (cache / ckpt.name).symlink_to(fake)
    state = hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert not (cache / ckpt.name).is_symlink() and http_server.count("/" + ckpt.name) == 1
    assert [e.kind for e in vadmin.cached_files() if e.path.name.startswith(f"{ckpt.name}.corrupt-")] == [
        "not a regular file"
    ]


@pytest.mark.parametrize("planted", ["folder", "dangling"])
def test_a_link_in_place_of_the_stamps_folder_is_neither_written_nor_read_through(
    small_checkpoints, cache, tmp_path, caplog, planted
):
    """`.stamps` holds the local files' stamps: a link someone put in its place is never followed (issue 24)."""
    ckpt = small_checkpoints.zip
    elsewhere = tmp_path / "elsewhere"
    hub.fetch(str(ckpt.path), sha256=ckpt.sha256)  # a real `.stamps` first: its stamp, to plant elsewhere
    (stamp,) = (cache / ".stamps").iterdir()
    shutil.move(cache / ".stamps", elsewhere)
    forged = json.loads((elsewhere / stamp.name).read_text())
    (elsewhere / stamp.name).write_text(json.dumps({**forged, "sha256": "0" * 64, "checked": True}))
    before = sorted((p.name, p.read_bytes()) for p in elsewhere.iterdir())
    (cache / ".stamps").symlink_to(elsewhere if planted == "folder" else tmp_path / "nowhere")
    with caplog.at_level("DEBUG", logger="vggnet.hub._cache"):
        for _ in range(2):  # the forged stamp would make it a ChecksumError; nothing written makes it hash again
            assert fingerprint(hub.load_state_dict_from_url(str(ckpt.path), sha256=ckpt.sha256)) == (
                small_checkpoints.fingerprint
            )
    assert sorted((p.name, p.read_bytes()) for p in elsewhere.iterdir()) == before
    assert not (tmp_path / "nowhere").exists() and (cache / ".stamps").is_symlink()
    assert "not writing" in caplog.text and "not vggnet's folder of stamps" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= 30]  # stamps only save time: nothing to warn about


def test_a_stamp_nested_too_deep_is_no_stamp_not_a_recursion_error(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    vcache.stamp_of(weights).write_text("[" * 60_000)  # under the 64 KiB a stamp may take
    assert vcache.read_stamp(vcache.stamp_of(weights)) is None
