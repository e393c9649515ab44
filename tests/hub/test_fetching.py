"""vggnet.hub._fetching: fetch, load, mirrors, offline use and local files, against a real HTTP server on loopback.

The full-size tests use the session's generated ~528 MiB vgg16 checkpoints (see conftest.py);
everything whose outcome does not depend on size uses a small file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._cache as vcache
import vggnet.hub._fetching as hub
from tests.helpers import ROOT, Checkpoints, file_sha256, fingerprint, leftovers, no_hashing, record
from vggnet import errors
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models.weights import VGG16_Weights, Weights


@pytest.mark.parametrize(
    "path",
    [
        "/..%2F..%2Fescape.pth",
        "/a%2Fb.pth",
        "/a%5Cb.pth",
        "/%2E%2E",
        "/.hidden.pth",
        "/",
        "/x%00y.pth",
        "/C%3A%5Cescape.pth",
        "/" + "a" * 240 + ".pth",
    ],
)
def test_hostile_file_names_are_refused(http_server, cache, tmp_path, path):
    http_server.add(path.split("?")[0], b"x")
    with pytest.raises(ValueError, match="refusing the file name"):
        hub.fetch(http_server.url(path), sha256="0" * 64, progress=False)
    with pytest.raises(ValueError, match="refusing the file name"):
        Weights(url=http_server.url(path), sha256="0" * 64).get_state_dict(progress=False)
    assert http_server.log() == []
    assert not cache.exists()
    assert not list(tmp_path.rglob("escape.pth"))


@pytest.mark.parametrize("file_name", ["../escape.pth", "/tmp/escape.pth", "", "..", "dir/x.pth"])
def test_hostile_file_name_arguments_are_refused(http_server, cache, file_name):
    with pytest.raises(ValueError, match="refusing the file name"):
        hub.load_state_dict_from_url(http_server.url("/x.pth"), file_name=file_name, sha256="0" * 8)
    assert http_server.log() == []


def test_a_percent_encoded_name_is_decoded(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/my%20model-" + ckpt.sha256[:8] + ".pth", ckpt.path)
    assert hub.fetch(url, progress=False) == cache / f"my model-{ckpt.sha256[:8]}.pth"


def test_the_name_prefix_is_checked_when_no_digest_is_given(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    wrong = "/model-" + ("0" * 8 if not ckpt.sha256.startswith("0" * 8) else "1" * 8) + ".pth"
    url = http_server.add(wrong, ckpt.path)
    with pytest.raises(errors.ChecksumError):
        hub.load_state_dict_from_url(url, progress=False)


def test_no_digest_at_all_downloads_with_a_warning(http_server, small_checkpoints, cache, caplog):
    url = http_server.add("/model.pth", small_checkpoints.zip.path)
    with caplog.at_level(logging.WARNING, logger="vggnet.hub._fetching"):
        state = hub.load_state_dict_from_url(url, progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert "cannot be verified" in caplog.text


def test_local_files_are_verified_in_place(small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    for url in (str(ckpt.path), ckpt.path.as_uri()):
        state = hub.load_state_dict_from_url(url, sha256=ckpt.sha256)
        assert fingerprint(state) == small_checkpoints.fingerprint
    assert not (cache / ckpt.name).exists()  # not copied
    assert len(list((cache / ".stamps").iterdir())) == 1  # one stamp, keyed by the resolved path
    monkeypatch.setattr(vcache, "hash_file", no_hashing)
    hub.fetch(str(ckpt.path), sha256=ckpt.sha256)  # the stamp vouches for it now
    with pytest.raises(errors.ChecksumError, match="left where it is"):
        hub.fetch(str(ckpt.path), sha256="0" * 64)
    assert ckpt.path.exists()


def test_offline_without_the_file_names_file_url_and_folder(cache, monkeypatch):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    official = VGG16_Weights.IMAGENET1K_V1.value
    with pytest.raises(FileNotFoundError) as info:
        official.get_state_dict()
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and official.url in message and str(cache) in message


def test_offline_with_the_file_never_touches_the_network(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    record(url, ckpt).get_state_dict(progress=False)
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    state = record(url, ckpt).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/" + ckpt.name) == 1
    placed = small_checkpoints.legacy  # put in by hand: no stamp yet, so it is hashed once
    (cache / placed.name).write_bytes(placed.path.read_bytes())
    state = record(http_server.url("/" + placed.name), placed).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/" + placed.name) == 0


def test_mirror_over_http(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    http_server.add("/mirror/" + ckpt.name, ckpt.path)
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/mirror"))
    state = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/mirror/" + ckpt.name) == 1
    bad = small_checkpoints.legacy  # a mirror holding the wrong bytes under the name is caught
    http_server.add("/mirror/" + bad.name, ckpt.path)
    with pytest.raises(errors.ChecksumError):
        Weights(url=OFFICIAL_BASE + bad.name, sha256=bad.sha256).get_state_dict(progress=False)


@pytest.mark.parametrize("as_uri", [False, True], ids=["directory", "file-url"])
def test_mirror_as_a_directory(small_checkpoints, cache, monkeypatch, as_uri):
    ckpt = small_checkpoints.zip
    mirror = ckpt.path.parent
    monkeypatch.setenv("VGGNET_MIRROR", mirror.as_uri() if as_uri else str(mirror))
    state = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert not (cache / ckpt.name).exists()  # used in place
    with pytest.raises(errors.ChecksumError):
        Weights(url=OFFICIAL_BASE + ckpt.name, sha256="0" * 64).get_state_dict(progress=False)


def test_a_file_in_torch_hubs_cache_is_used_only_if_it_matches(http_server, small_checkpoints, cache, _isolated_cache):
    ckpt = small_checkpoints.zip
    torch_dir = _isolated_cache / "hub" / "checkpoints"
    torch_dir.mkdir(parents=True)
    (torch_dir / ckpt.name).write_bytes(b"not the checkpoint")
    url = http_server.add("/" + ckpt.name, ckpt.path)
    record(url, ckpt).get_state_dict(progress=False)
    assert http_server.count("/" + ckpt.name) == 1  # the wrong file was ignored ...
    assert (torch_dir / ckpt.name).read_bytes() == b"not the checkpoint"  # ... and left alone

    right = small_checkpoints.legacy
    (torch_dir / right.name).write_bytes(right.path.read_bytes())
    url = http_server.add("/" + right.name, right.path)
    state = record(url, right).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/" + right.name) == 0
    assert file_sha256(cache / right.name) == right.sha256


def test_offline_a_matching_file_in_torch_hubs_cache_is_adopted(small_checkpoints, tmp_path, monkeypatch,
                                                                 _isolated_cache):  # fmt: skip
    ckpt = small_checkpoints.zip
    torch_dir = _isolated_cache / "hub" / "checkpoints"
    torch_dir.mkdir(parents=True)
    (torch_dir / ckpt.name).write_bytes(ckpt.path.read_bytes())
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "not-yet-created"))
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    state = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256).get_state_dict(progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert (tmp_path / "not-yet-created" / ckpt.name).is_file()


@pytest.mark.slow
def test_importing_vggnet_touches_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TORCH_HOME": str(home / "torch"), "VGGNET_HOME": str(home / "v")}
    subprocess.run([sys.executable, "-c", "import vggnet, vggnet.hub._fetching"], cwd=ROOT, env=env, check=True)
    assert list(home.iterdir()) == []


def test_checkpoints_fixture_formats(vgg16_checkpoints: Checkpoints):
    with open(vgg16_checkpoints.zip.path, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"
    with open(vgg16_checkpoints.legacy.path, "rb") as f:
        assert f.read(4) != b"PK\x03\x04"
    assert vgg16_checkpoints.zip.size > 527 << 20  # 138,357,544 float32 parameters


def _pin_digests():
    spec = importlib.util.spec_from_file_location("pin_digests", ROOT / "weights" / "pin_digests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pin_digests"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_pin_digests_measures_each_file_from_a_mirror(http_server, small_checkpoints, tmp_path):
    tool = _pin_digests()
    z, legacy = small_checkpoints.zip, small_checkpoints.legacy
    for f in (z, legacy):
        http_server.add("/models/" + f.name, f.path)
    records = [
        ("A", Weights(url=OFFICIAL_BASE + z.name, sha256=z.sha256[:8], file_size=round(z.size / 2**20, 3))),
        ("B", Weights(url=OFFICIAL_BASE + legacy.name, sha256=legacy.sha256[:8], size=legacy.size)),
    ]
    pinned, failures = tool.pin(records, base=http_server.url("/models/"), folder=tmp_path / "d", progress=False)
    assert failures == []
    assert [(p.sha256, p.size) for p in pinned] == [(z.sha256, z.size), (legacy.sha256, legacy.size)]
    assert all(p.agrees for p in pinned)
    assert f'sha256="{z.sha256}"' in tool.report(pinned)


@pytest.mark.slow
def test_pin_digests_command_refuses_a_file_that_is_not_the_official_one(http_server, small_checkpoints, tmp_path):
    http_server.add("/models/vgg11-8a719046.pth", small_checkpoints.zip.path)  # the wrong bytes
    out = subprocess.run(
        [sys.executable, str(ROOT / "weights" / "pin_digests.py"), "--base", http_server.url("/models/"),
         "--only", "vgg11-8a719046.pth", "--dir", str(tmp_path / "d"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "VGG11_Weights.IMAGENET1K_V1" in out.stderr and "checksum mismatch" in out.stderr
    assert http_server.count("/models/vgg11-8a719046.pth") == 1


def test_add_to_mirror_downloads_or_links_from_the_cache(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    weights = record(http_server.add("/" + ckpt.name, ckpt.path), ckpt, size=ckpt.size)
    path = hub.add_to_mirror(weights.url, tmp_path / "first", sha256=weights.sha256, size=weights.size, progress=False)
    assert path == tmp_path / "first" / ckpt.name and file_sha256(path) == ckpt.sha256
    assert http_server.count("/" + ckpt.name) == 1 and not cache.exists()  # into the mirror, not the cache

    cached = hub.fetch(weights.url, sha256=ckpt.sha256, progress=False)
    path = hub.add_to_mirror(
        weights.url, str(tmp_path / "second"), sha256=weights.sha256, size=weights.size, progress=False
    )
    assert http_server.count("/" + ckpt.name) == 2  # only the fetch into the cache went to the server
    assert path == tmp_path / "second" / ckpt.name and path.stat().st_ino == cached.stat().st_ino
    assert leftovers(tmp_path / "second") == [".stamps", ckpt.name]  # no temporary file left behind


@pytest.mark.parametrize("bad", ["xyz", "abc1234", "0" * 65])
def test_a_malformed_sha256_argument_is_refused_before_any_request(http_server, small_checkpoints, cache, bad):
    url = http_server.add("/m/" + small_checkpoints.zip.name, small_checkpoints.zip.path)
    with pytest.raises(ValueError, match="64 hex digits of the file's SHA-256, or at least its first 8"):
        hub.fetch(url, sha256=bad, progress=False)
    assert http_server.count("/m/" + small_checkpoints.zip.name) == 0
    padded = f"  {small_checkpoints.zip.sha256.upper()}\n"  # surrounding space and upper case are fine here
    assert hub.fetch(url, sha256=padded, progress=False).name == small_checkpoints.zip.name


def test_a_local_files_name_is_not_taken_for_a_digest(small_checkpoints, tmp_path, cache, caplog):
    local = tmp_path / "vgg11-epoch-00000010.pth"
    shutil.copyfile(small_checkpoints.zip.path, local)
    for source in (str(local), local.as_uri()):
        with caplog.at_level(logging.INFO, logger="vggnet.hub._fetching"):
            assert fingerprint(hub.load_state_dict_from_url(source)) == small_checkpoints.fingerprint
    assert "unverified" in caplog.text
    with pytest.raises(errors.ChecksumError):  # an explicit digest still is
        hub.fetch(str(local), sha256="0" * 64)


def test_an_unverified_local_file_is_mentioned_once_per_file_at_info(small_checkpoints, tmp_path, cache, caplog):
    """A loop reloading its own checkpoint each epoch (a new file under the same name each time) hears it once."""
    ckpt = small_checkpoints.zip
    last, other = tmp_path / "last.pth", tmp_path / "other.pth"
    with caplog.at_level(logging.DEBUG, logger="vggnet.hub._fetching"):
        for epoch in range(3):
            shutil.copyfile(ckpt.path, tmp_path / "new.pth")
            os.replace(tmp_path / "new.pth", last)  # as a run saves last.pth
            hub.load_state_dict_from_url(str(last))
            hub.load_state_dict_from_url(last.as_uri() if epoch else os.path.join(tmp_path, ".", "last.pth"))
        shutil.copyfile(ckpt.path, other)
        hub.fetch(str(other))
    said = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in said] == [("INFO", str(last)), ("INFO", str(other))]
    hub.fetch(str(last), sha256=ckpt.sha256)  # verified: nothing to say
    assert len([r for r in caplog.records if "unverified" in r.getMessage()]) == 2


def test_a_url_names_digest_mismatch_says_where_the_digest_came_from(http_server, small_checkpoints, cache):
    url = http_server.add("/run-20240101.pth", small_checkpoints.zip.path)
    with pytest.raises(errors.ChecksumError) as info:
        hub.fetch(url, progress=False)
    message = str(info.value)
    assert "hex part of the file name" in message and "sha256=" in message and "retry" not in message
    assert info.value.expected == "20240101"
    assert hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False).name == "run-20240101.pth"


def test_a_names_digest_mismatch_offline_keeps_the_offline_advice(http_server, small_checkpoints, cache, monkeypatch):
    url = http_server.add("/run-20240101.pth", small_checkpoints.zip.path)
    cache.mkdir()
    (cache / "run-20240101.pth").write_bytes(small_checkpoints.zip.path.read_bytes())  # not 20240101...
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(errors.ChecksumError) as info:
        hub.fetch(url, progress=False)
    message = str(info.value)
    assert "Unset VGGNET_OFFLINE" in message and "retry" not in message and "hex part" not in message
    assert info.value.expected == "20240101" and http_server.count("/run-20240101.pth") == 0


def test_a_names_digest_mismatch_in_a_mirror_directory_keeps_the_local_advice(small_checkpoints, cache, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(small_checkpoints.zip.path, mirror / "run-20240101.pth")
    monkeypatch.setenv("VGGNET_MIRROR", str(mirror))
    with pytest.raises(errors.ChecksumError) as info:
        hub.fetch(OFFICIAL_BASE + "run-20240101.pth", progress=False)
    message = str(info.value)
    assert "replace it with a good copy" in message and "retry" not in message and "hex part" not in message
    assert (mirror / "run-20240101.pth").is_file()  # left where it is


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_a_mirror_directory_comes_after_the_cache(http_server, small_checkpoints, cache, tmp_path, monkeypatch, as_uri):
    ckpt = small_checkpoints.zip
    weights = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256)
    cache.mkdir()
    shutil.copyfile(ckpt.path, cache / ckpt.name)
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("VGGNET_MIRROR", empty.as_uri() if as_uri else str(empty))
    assert fingerprint(weights.get_state_dict(progress=False)) == small_checkpoints.fingerprint

    (cache / ckpt.name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        weights.get_state_dict(progress=False)
    message = str(info.value)
    assert "VGGNET_MIRROR" in message and str(empty) in message and OFFICIAL_BASE + ckpt.name in message


@pytest.mark.parametrize("mirror", ["ftp://example.org/models", "s3://bucket/models"])
def test_a_mirror_with_an_unsupported_scheme_is_refused(small_checkpoints, cache, monkeypatch, mirror):
    monkeypatch.setenv("VGGNET_MIRROR", mirror)
    with pytest.raises(ValueError, match=r"VGGNET_MIRROR='.*' has the unsupported scheme .* or a local directory"):
        Weights(url=OFFICIAL_BASE + "vgg16-397923af.pth", sha256="397923af").get_state_dict(progress=False)
    assert not cache.exists()


def test_add_to_mirror_replaces_a_corrupt_cached_copy_from_the_url(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    weights = record(http_server.add("/" + ckpt.name, ckpt.path), ckpt, size=ckpt.size)
    hub.fetch(weights.url, sha256=ckpt.sha256, progress=False)
    (cache / ckpt.name).write_bytes(b"y" * ckpt.size)  # the stamp no longer fits: hashed, found wrong
    path = hub.add_to_mirror(weights.url, tmp_path / "mirror", sha256=weights.sha256, size=weights.size, progress=False)
    assert file_sha256(path) == ckpt.sha256 and http_server.count("/" + ckpt.name) == 2
    assert [e.kind for e in vadmin.cached_files()] == ["corrupt"]  # moved aside, as a load would


def test_size_is_enforced_for_local_files_too(small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    with pytest.raises(ValueError, match=f"has {ckpt.size:,} bytes, not the 123 that size= says"):
        hub.fetch(str(ckpt.path), sha256=ckpt.sha256, size=123)
    with pytest.raises(ValueError, match="size= says"):
        hub.fetch(str(ckpt.path), size=123)  # no digest: the size is all there is to check
    assert hub.fetch(str(ckpt.path), sha256=ckpt.sha256, size=ckpt.size) == ckpt.path
