"""vggnet.cache: the cache folder's stamps, listing, removal, locks and integrity checks, with real files,
a real HTTP server on loopback and real processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

import vggnet.cache as vcache
import vggnet.cache_admin as vadmin
import vggnet.hub as hub
import vggnet.locks as vlocks

from .conftest import (
    Checkpoints,
    Fault,
    FaultServer,
    file_sha256,
    fingerprint,
    leftovers,
    no_hashing,
    record,
    spawn_python,
)


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
        with pytest.raises(vcache.ChecksumError, match="moved aside"):
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
    with pytest.raises(vcache.ChecksumError) as info:
        weights.get_state_dict(progress=False)
    assert "retry" not in str(info.value) and "Unset VGGNET_OFFLINE" in str(info.value)


def test_a_live_but_stuck_lock_holder_is_not_waited_for_forever(http_server, small_checkpoints, cache, monkeypatch):
    monkeypatch.setattr(vlocks, "LOCK_STALL", 0.5)
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    with filelock.FileLock(str(cache / ckpt.name) + ".lock"):  # another holder that never finishes
        assert file_sha256(hub.fetch(url, progress=False)) == ckpt.sha256


def fill_cache(http_server: FaultServer, checkpoints: Checkpoints, cache: Path) -> None:
    """A legacy download (stamp, lock, zip copy), a partial and a corrupt copy of another, a stranger's file."""
    legacy, other = checkpoints.legacy, checkpoints.zip
    hub.load_state_dict_from_url(http_server.add("/" + legacy.name, legacy.path), progress=False)
    hub.fetch(str(other.path), sha256=other.sha256, progress=False)  # local: its stamp goes to .stamps/
    (cache / f"{other.name}.{other.sha256[:16]}.0a1b2c3d.partial").write_bytes(b"p" * 10)
    (cache / f"{other.name}.corrupt-20240102-030405-beef").write_bytes(b"c" * 20)
    (cache / "notes.txt").write_bytes(b"n" * 30)


def test_cached_files_reads_the_layout(http_server, small_checkpoints, cache, tmp_path):
    fill_cache(http_server, small_checkpoints, cache)
    legacy, other = small_checkpoints.legacy.name, small_checkpoints.zip.name
    copy = cache / f"{legacy}.zip"
    entries = {e.path.name: e for e in vadmin.cached_files()}
    assert [e.path for e in vadmin.cached_files()] == sorted(cache / name for name in entries)
    assert {name: (e.kind, e.base, sorted(p.name for p in e.related)) for name, e in entries.items()} == {
        legacy: ("checkpoint", legacy, [f"{legacy}.lock", f"{legacy}.stamp"]),
        copy.name: ("zip copy", legacy, [f"{copy.name}.lock", f"{copy.name}.stamp"]),
        f"{other}.{small_checkpoints.zip.sha256[:16]}.0a1b2c3d.partial": ("partial", other, []),
        f"{other}.corrupt-20240102-030405-beef": ("corrupt", other, []),
        "notes.txt": ("checkpoint", "notes.txt", []),
    }  # the stamps, locks and .stamps/ are not entries of their own
    assert all(e.size == e.path.stat().st_size for e in entries.values())
    assert entries[legacy].sha256 == small_checkpoints.legacy.sha256  # as its stamp recorded it
    assert entries[copy.name].sha256 == file_sha256(copy)
    assert entries["notes.txt"].sha256 is None and entries["notes.txt"].name_digest is None
    assert entries[legacy].name_digest == small_checkpoints.legacy.sha256[:8]
    assert entries[copy.name].name_digest is None  # the digest in its name is the original's
    assert vadmin.cached_files(cache) == vadmin.cached_files()
    assert vadmin.cached_files(tmp_path / "missing") == []


def test_remove_cached_takes_everything_that_belongs_to_a_checkpoint(http_server, small_checkpoints, cache):
    fill_cache(http_server, small_checkpoints, cache)
    legacy, other = small_checkpoints.legacy.name, small_checkpoints.zip.name
    removed = vadmin.remove_cached(legacy, "not-cached.pth")
    assert [e.path.name for e in removed.files] == [legacy, f"{legacy}.zip"] and removed.skipped == ()
    assert not any(p.exists() for e in removed.files for p in (e.path, *e.related))
    assert removed.freed == sum(e.size for e in removed.files)
    assert {e.base for e in vadmin.cached_files()} == {other, "notes.txt"}
    assert (cache / ".stamps").is_dir()

    removed = vadmin.remove_cached(other, folder=cache, local_stamps=True)
    assert sorted(e.kind for e in removed.files) == ["corrupt", "partial"]
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


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
    vcache._write_stamp(path, ckpt.sha256, checked=True)  # a stamp that fits the file's stat but not its bytes
    assert vcache._stamped_digest(path) == ckpt.sha256
    with pytest.raises(vcache.ChecksumError) as caught:
        vcache.verify_file(path, ckpt.sha256)
    assert (caught.value.expected, caught.value.actual) == (ckpt.sha256, hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data and vcache._stamped_digest(path) == ckpt.sha256  # left as it was


def test_only_vggnets_own_names_are_bookkeeping(http_server, small_checkpoints, cache):
    """The cache may be torch.hub's, shared with torchvision: a name that merely looks like ours is not ours."""
    fill_cache(http_server, small_checkpoints, cache)
    legacy = small_checkpoints.legacy.name
    strangers = {
        "vgg16-397923af.pth": b"torchvision's download, never verified by vggnet",
        "vgg16-397923af.pth.0123456789abcdef0123456789abcdef.partial": b"torch.hub's own temporary",
        "notes.txt.zip": b"a zip beside notes.txt, not a copy vggnet wrote",
        "x.pth.corrupt-later": b"not our time stamp",
    }
    for name, data in strangers.items():
        (cache / name).write_bytes(data)
    entries = {e.path.name: e for e in vadmin.cached_files()}
    for name in strangers:
        assert (entries[name].kind, entries[name].base, entries[name].ours) == ("checkpoint", name, False)
    assert entries["notes.txt"].ours is False
    ours = {name for name, e in entries.items() if e.ours}
    assert ours == {
        legacy, f"{legacy}.zip", f"{small_checkpoints.zip.name}.{small_checkpoints.zip.sha256[:16]}.0a1b2c3d.partial",
        f"{small_checkpoints.zip.name}.corrupt-20240102-030405-beef",
    }  # fmt: skip

    removed = vadmin.remove_cached(*ours)
    assert {e.path.name for e in removed.files} == ours
    assert sorted(leftovers(cache)) == sorted([".stamps", "notes.txt", *strangers])


def test_remove_cached_takes_one_listed_file_alone(http_server, small_checkpoints, cache):
    fill_cache(http_server, small_checkpoints, cache)
    legacy, other = small_checkpoints.legacy.name, small_checkpoints.zip.name
    corrupt = f"{other}.corrupt-20240102-030405-beef"
    assert [e.path.name for e in vadmin.remove_cached(corrupt).files] == [corrupt]
    assert [e.path.name for e in vadmin.remove_cached(f"{legacy}.zip").files] == [f"{legacy}.zip"]
    assert not (cache / f"{legacy}.zip.stamp").exists() and (cache / legacy).exists()
    assert (cache / f"{other}.{small_checkpoints.zip.sha256[:16]}.0a1b2c3d.partial").exists()


LIVE_DOWNLOAD = r"""
import sys
import vggnet.hub as hub
print(hub.fetch(sys.argv[1], sha256=sys.argv[2], progress=False))
"""


def test_remove_cached_leaves_a_running_downloads_files(http_server, cache):
    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    url = http_server.add("/live.bin", data, rate=1 << 20)  # ~3 s
    downloader = spawn_python(LIVE_DOWNLOAD, url, digest)
    deadline = time.monotonic() + 30
    while not (cache.exists() and any(p.stat().st_size for p in cache.glob("*.partial"))):
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)
    entries = vadmin.cached_files()
    assert [e.kind for e in entries] == ["partial"]
    removed = vadmin.remove_cached("live.bin")
    assert removed.files == () and sorted(p.name for p in removed.skipped) == [entries[0].path.name, "live.bin.lock"]
    out, err = downloader.communicate(timeout=60)
    assert downloader.returncode == 0, err
    assert Path(out.strip()).read_bytes() == data
    removed = vadmin.remove_cached("live.bin")  # now that it is done, everything goes
    assert [e.path.name for e in removed.files] == ["live.bin"] and removed.skipped == ()
    assert os.listdir(cache) == []


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
    matches = vcache._stamp_matches

    def swap_after_the_match(stamp, st):  # a co-tenant's rename lands between the match and the rewrite
        found = matches(stamp, st)
        os.replace(other, dest)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vcache, "_stamp_matches", swap_after_the_match)
        assert vcache._stamped_digest(dest, expected=ckpt.sha256) == file_sha256(ckpt.path)
    assert vcache._stamped_digest(dest, expected=ckpt.sha256) is None  # the stamp does not describe the new file
    monkeypatch.setenv(vcache.ENV_OFFLINE, "1")
    with pytest.raises(vcache.ChecksumError, match="moved aside"):  # hashed, refused, set aside
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


def _plant_victim(tmp_path: Path) -> tuple[Path, bytes]:
    victim = tmp_path / "victim.txt"  # a file the user can write, outside the cache
    content = b"precious data, not a checkpoint\n" * 100
    victim.write_bytes(content)
    victim.chmod(0o600)
    return victim, content


def test_a_planted_partial_link_is_never_written_through(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    victim, content = _plant_victim(tmp_path)
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


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_planted_lock_link_is_not_truncated(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    victim, content = _plant_victim(tmp_path)
    cache.mkdir()
    (cache / f"{ckpt.name}.lock").symlink_to(victim)
    assert file_sha256(hub.fetch(url, sha256=ckpt.sha256, progress=False)) == ckpt.sha256
    assert victim.read_bytes() == content


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


@pytest.mark.parametrize("where", ["checkpoint", "stamp", "lock", "partial", "dev-zero", "device"])
def test_a_fifo_or_device_in_the_cache_never_hangs_a_load(http_server, small_checkpoints, cache, where):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    name = {
        "checkpoint": ckpt.name,
        "dev-zero": ckpt.name,
        "device": ckpt.name,
        "stamp": f"{ckpt.name}.stamp",
        "lock": f"{ckpt.name}.lock",
        "partial": f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial",
    }[where]
    if where == "dev-zero":
        (cache / name).symlink_to("/dev/zero")  # endless bytes: hashing it would never end
    elif where == "device":
        try:  # /dev/zero's own device node, which root can make anywhere
            os.mknod(cache / name, stat.S_IFCHR | 0o666, os.makedev(1, 5))
        except PermissionError:
            pytest.skip("cannot make a device node here (not root)")
    else:
        os.mkfifo(cache / name)  # opening it for reading would wait for a writer forever
    if where == "stamp":  # a cached file, so that its stamp is read
        shutil.copyfile(ckpt.path, cache / ckpt.name)
    outcome: list[object] = []

    def load() -> None:
        try:
            outcome.append(hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False))
        except Exception as err:
            outcome.append(err)

    loader = threading.Thread(target=load, daemon=True)  # a hang would leave it blocked, not the test
    loader.start()
    loader.join(timeout=60)
    assert not loader.is_alive(), f"a load hangs on a {where} in the cache"
    (state,) = outcome
    assert isinstance(state, dict) and fingerprint(state) == small_checkpoints.fingerprint, state
    listed = {e.path.name: e.kind for e in vadmin.cached_files()}
    if where in ("partial", "dev-zero", "device"):
        assert "not a regular file" in listed.values(), listed


def test_cache_listing_shows_fifos_links_and_orphan_locks(cache):
    cache.mkdir()
    os.mkfifo(cache / "pipe.pth")
    (cache / "zero.pth").symlink_to("/dev/zero")
    (cache / "gone.pth.lock").write_bytes(b"")  # a failed download's lock: its checkpoint is not there
    (cache / "kept.pth").write_bytes(b"k")
    (cache / "kept.pth.lock").write_bytes(b"")
    entries = {e.path.name: e for e in vadmin.cached_files()}
    assert {n: e.kind for n, e in entries.items()} == {
        "gone.pth.lock": "lock",
        "kept.pth": "checkpoint",
        "pipe.pth": "not a regular file",
        "zero.pth": "not a regular file",
    }
    assert not entries["pipe.pth"].ours and entries["gone.pth.lock"].ours  # --clear takes what vggnet made
    removed = vadmin.remove_cached("gone.pth", "pipe.pth")
    assert sorted(e.path.name for e in removed.files) == ["gone.pth.lock", "pipe.pth"]
    assert sorted(os.listdir(cache)) == ["kept.pth", "kept.pth.lock", "zero.pth"]


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
    victim, content = _plant_victim(tmp_path)  # the user's own file, on the same file system as the cache
    cache.mkdir()
    os.link(victim, cache / f"{ckpt.name}.{ckpt.sha256[:16]}.0a1b2c3d.partial")
    assert file_sha256(hub.fetch(url, sha256=ckpt.sha256, progress=False)) == ckpt.sha256
    assert victim.read_bytes() == content and http_server.log("/" + ckpt.name)[0].range is None


def test_a_read_only_cache_cannot_be_cleared_and_says_so(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    hub.fetch(http_server.add("/" + ckpt.name, ckpt.path), sha256=ckpt.sha256, progress=False)
    refused = pytest.raises(OSError, match=f"VGGNET_HOME={cache} cannot hold checkpoints: cannot remove")
    with read_only_mount(cache), refused as info:
        vadmin.remove_cached(ckpt.name)
    assert "\n" not in str(info.value) and "[Errno" not in str(info.value)
    assert (cache / ckpt.name).exists()


@contextlib.contextmanager
def read_only_mount(folder: Path) -> Iterator[None]:
    """`folder` remounted read-only in place (a bind mount: root ignores permission bits), or skip."""
    try:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot remount read-only here")
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)
