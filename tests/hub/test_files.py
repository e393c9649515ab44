"""vggnet.hub._files: only regular files are opened (never through a link, never waiting on a FIFO), hashing,
and private temporary files published by atomic rename; and a load that meets a FIFO or device in the cache.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import threading

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._fetching as hub
import vggnet.hub._files as vfiles
from tests.helpers import fingerprint, plant_victim
from vggnet import errors


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_open_read_reads_a_regular_file_and_refuses_a_link_to_one(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"abc")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with vfiles.open_read(real) as f:
        assert f.read() == b"abc"
    with pytest.raises(errors.NotARegularFileError, match="it is a symbolic link") as info:
        vfiles.open_read(link)
    assert info.value.path == link and "vggnet cache --remove link.bin" in str(info.value)
    with vfiles.open_read(link, follow=True) as f:  # followed only when asked
        assert f.read() == b"abc"


def test_open_fd_refuses_a_fifo_at_once_and_a_directory(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def open_it(flags: int) -> None:
        try:
            os.close(vfiles.open_fd(fifo, flags))
        except BaseException as err:
            outcome.append(err)

    for flags in (os.O_RDONLY, os.O_WRONLY):  # without O_NONBLOCK, both would wait for the other end
        opener = threading.Thread(target=open_it, args=(flags,), daemon=True)
        opener.start()
        opener.join(timeout=10)
        assert not opener.is_alive(), f"opening a FIFO with flags {flags} hangs"
    assert [type(e) for e in outcome] == [errors.NotARegularFileError] * 2
    assert all("it is a FIFO" in str(e) for e in outcome)
    for flags in (os.O_RDONLY, os.O_RDWR):
        with pytest.raises(errors.NotARegularFileError, match="it is a directory"):
            vfiles.open_fd(tmp_path, flags)


def test_open_fd_gives_a_blocking_descriptor(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    fd = vfiles.open_fd(path)
    try:
        assert os.get_blocking(fd)  # O_NONBLOCK was only for the open
    finally:
        os.close(fd)


def test_open_fd_creates_with_the_mode_given_but_never_through_a_link(tmp_path):
    lock = tmp_path / "m.pth.lock"
    os.close(vfiles.open_fd(lock, os.O_RDONLY | os.O_CREAT, mode=0o644))
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644 & ~umask()
    dangling = tmp_path / "n.pth.lock"
    dangling.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(errors.NotARegularFileError, match="it is a symbolic link"):
        vfiles.open_fd(dangling, os.O_RDONLY | os.O_CREAT)
    assert not (tmp_path / "elsewhere").exists()


def test_not_a_regular_file_error_survives_pickling(tmp_path):
    err = errors.NotARegularFileError(tmp_path / "x.pth", "a FIFO")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.NotARegularFileError and isinstance(back, OSError)
    assert back.path == err.path and str(tmp_path / "x.pth") in str(back)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("S_IFLNK", "a symbolic link"),
        ("S_IFIFO", "a FIFO"),
        ("S_IFDIR", "a directory"),
        ("S_IFCHR", "a character device"),
        ("S_IFBLK", "a block device"),
        ("S_IFSOCK", "a socket"),
        ("S_IFREG", "not a regular file"),
    ],
)
def test_kind_of_mode_names_what_a_name_is(kind, what):
    assert vfiles.kind_of_mode(getattr(stat, kind) | 0o644) == what


def test_is_regular_only_for_a_file_itself(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"")
    (tmp_path / "link.bin").symlink_to(real)
    assert vfiles.is_regular(real)
    assert not vfiles.is_regular(tmp_path / "link.bin")
    assert not vfiles.is_regular(tmp_path)
    assert not vfiles.is_regular(tmp_path / "missing")


def test_hash_file_hashes_a_name_or_an_open_file_from_its_start(tmp_path):
    data = os.urandom(2 * vfiles.CHUNK + 123)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    seen: list[int] = []
    assert vfiles.hash_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert seen == [vfiles.CHUNK, vfiles.CHUNK, 123]
    with open(path, "rb") as f:
        f.seek(1000)
        assert vfiles.hash_file(f) == hashlib.sha256(data).hexdigest()
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    with pytest.raises(errors.NotARegularFileError):
        vfiles.hash_file(link)
    assert vfiles.hash_file(link, follow=True) == hashlib.sha256(data).hexdigest()


def test_copy_hashing_copies_into_a_new_private_file(tmp_path):
    data = os.urandom(vfiles.CHUNK + 7)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    assert vfiles.copy_hashing(src, dst) == hashlib.sha256(data).hexdigest()
    assert dst.read_bytes() == data and stat.S_IMODE(dst.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        vfiles.copy_hashing(src, dst)
    link = tmp_path / "link.bin"
    link.symlink_to(src)
    with pytest.raises(errors.NotARegularFileError):
        vfiles.copy_hashing(link, tmp_path / "other.bin")


def test_temp_name_is_hidden_beside_the_file_and_fresh_each_time(tmp_path):
    dest = tmp_path / "vgg16-397923af.pth"
    first, second = vfiles.temp_name(dest), vfiles.temp_name(dest)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith(".vgg16-397923af.pth.") and first.name.endswith(".tmp")


def test_create_private_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        f = vfiles.create_private(tmp_path / "private.bin")
    finally:
        os.umask(old)
    with f:
        f.write(b"abc")
        f.seek(0)
        assert f.read() == b"abc"  # opened for reading and writing
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600


def test_create_private_never_opens_an_existing_name(tmp_path):
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"kept")
    victim, content = plant_victim(tmp_path)
    (tmp_path / "link.bin").symlink_to(victim)
    (tmp_path / "dangling.bin").symlink_to(tmp_path / "elsewhere")
    for name in ("existing.bin", "link.bin", "dangling.bin"):
        with pytest.raises(FileExistsError):
            vfiles.create_private(tmp_path / name)
    assert existing.read_bytes() == b"kept" and victim.read_bytes() == content
    assert not (tmp_path / "elsewhere").exists()


def test_publish_renames_a_readable_file_into_place_even_over_a_link(tmp_path):
    victim, content = plant_victim(tmp_path)
    for dest in (tmp_path / "model.pth", tmp_path / "planted.pth"):
        if dest.name == "planted.pth":
            dest.symlink_to(victim)
        else:
            dest.write_bytes(b"old")
        tmp = vfiles.temp_name(dest)
        with vfiles.create_private(tmp) as f:
            f.write(b"new" * 1000)
            f.flush()
            vfiles.publish(f, tmp, dest)
        assert not tmp.exists() and not dest.is_symlink()
        assert dest.read_bytes() == b"new" * 1000 and stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert victim.read_bytes() == content and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_publish_never_leaves_a_half_written_final_name(tmp_path):
    """A reader of the final name sees one whole file or another, never a mix or a short one."""
    dest, size = tmp_path / "model.pth", 256 << 10
    dest.write_bytes(b"\0" * size)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = dest.read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                seen.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for i in range(1, 101):
            tmp = vfiles.temp_name(dest)
            with vfiles.create_private(tmp) as f:
                for _ in range(4):  # written in pieces, as a download is
                    f.write(bytes([i]) * (size // 4))
                f.flush()
                vfiles.publish(f, tmp, dest)
    finally:
        stop.set()
        reader.join()
    assert seen == [] and dest.read_bytes() == bytes([100]) * size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


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
