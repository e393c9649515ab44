"""vggnet.hub._admin: what a cache folder holds, listed by kind with its stamps and locks, and how it is
removed, leaving what a live download holds and never opening a planted link or FIFO.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._fetching as hub
from tests.helpers import Checkpoints, file_sha256, leftovers, spawn_python
from tests.server import FaultServer


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
import vggnet.hub._fetching as hub
print(hub.fetch(sys.argv[1], sha256=sys.argv[2], progress=False))
"""


@pytest.mark.slow
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


def test_a_file_in_place_of_the_folder_is_named_not_listed_as_empty(tmp_path, monkeypatch):
    home, other = tmp_path / "a-file", tmp_path / "another-file"
    for path in (home, other):
        path.write_bytes(b"")
    monkeypatch.setenv("VGGNET_HOME", str(home))
    named = f"VGGNET_HOME={home} cannot hold checkpoints: it is not a directory"
    with pytest.raises(OSError, match=named):
        vadmin.cached_files()
    with pytest.raises(OSError, match=named):
        vadmin.remove_cached("x.pth")
    with pytest.raises(OSError, match=f"the directory {other} cannot hold checkpoints: it is not a directory"):
        vadmin.cached_files(other)
    assert home.read_bytes() == other.read_bytes() == b""
