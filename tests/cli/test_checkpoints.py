"""list, download, verify, cache (vggnet.cli.checkpoints), against a loopback server standing in for the official one.

Official checkpoints cannot be downloaded here, so the download, verify and cache tests stand in
records of their own (`fake_records`): official-looking URLs (download.pytorch.org/models/NAME) for
generated files with the right digests, served by the loopback server of conftest.py through
VGGNET_MIRROR."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
import torch

import vggnet
from tests.cli.helpers import (
    save_hub_style,
)
from tests.helpers import closed_port, fingerprint
from tests.helpers import file_sha256 as sha256
from vggnet.cli import main
from vggnet.hub._cache import cache_dir

# --- list --------------------------------------------------------------------------------------------


def test_list_shows_every_weight_and_what_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    (tmp_path / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "VGG16_Weights.IMAGENET1K_FEATURES" in out and str(tmp_path) in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("vgg")}
    assert len(rows) == 9
    assert rows["VGG16_Weights.IMAGENET1K_V1"].split()[2:] == [
        "(default)", "71.592", "90.382", "138,357,544", "15.470", "527.8", "no",
    ]  # fmt: skip
    assert rows["VGG19_Weights.IMAGENET1K_V1"].endswith("yes")
    assert main(["list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    features = next(e for e in entries if e["weights"] == "VGG16_Weights.IMAGENET1K_FEATURES")
    assert features["acc@1"] is None and features["params"] == 138_357_544 and not features["default"]
    assert [e["cached"] for e in entries].count(True) == 1
    assert {e["model"] for e in entries} == set(vggnet.list_models())


# --- download, verify, cache -------------------------------------------------------------------------


def test_download_to_a_mirror_then_load_through_VGGNET_MIRROR(fake_records, http_server, tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    assert main(["download", "--all", "--to", str(mirror)]) == 0
    out = capsys.readouterr().out
    for path, _, member in fake_records.values():
        assert (mirror / path.name).read_bytes() == path.read_bytes()
        assert str(member) in out and http_server.count(f"/models/{path.name}") == 1
    assert not cache_dir().exists()  # a mirror, not the cache

    http_server.reset()  # nothing served any more: only the mirror folder can answer
    monkeypatch.setenv("VGGNET_MIRROR", str(mirror))
    for _, state, member in fake_records.values():
        assert fingerprint(member.get_state_dict(progress=False)) == fingerprint(state)
    assert main(["verify", str(mirror)]) == 0
    assert capsys.readouterr().out.count("ok ") == 2


def test_download_into_the_cache_then_list_verify_and_remove(fake_records, http_server, capsys):
    path, _, member = fake_records["vgg11"]
    assert main(["download", "vgg11"]) == 0
    cached = cache_dir() / path.name
    assert cached.read_bytes() == path.read_bytes() and str(cached) in capsys.readouterr().out

    assert main(["list", "--json"]) == 0
    assert {e["weights"]: e["cached"] for e in json.loads(capsys.readouterr().out)} == {
        "VGG11_Weights.IMAGENET1K_V1": True,
        "VGG16_Weights.IMAGENET1K_V1": False,
    }
    assert main(["download", "VGG11_Weights.IMAGENET1K_V1"]) == 0  # already there: no second transfer
    assert http_server.count(f"/models/{path.name}") == 1
    capsys.readouterr()

    unknown = cache_dir() / "notes.bin"
    unknown.write_bytes(b"someone else's file")
    assert main(["verify", "--json"]) == 0
    status = {r["file"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert status == {path.name: "ok", "notes.bin": "unknown"}

    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    cached.write_bytes(data)
    assert main(["verify"]) == 1
    captured = capsys.readouterr()
    assert f"corrupt  {path.name}" in captured.out and f"{path.name} is corrupt" in captured.err

    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {f["file"]: f["weights"] for f in listing["files"]} == {path.name: str(member), "notes.bin": None}
    assert listing["total"] == len(data) + unknown.stat().st_size
    assert main(["cache", "--remove", "vgg11"]) == 0
    assert f"removed {path.name}" in capsys.readouterr().out
    assert sorted(os.listdir(cache_dir())) == ["notes.bin"]
    assert main(["cache", "--clear"]) == 0 and unknown.exists()  # not vggnet's: kept


def test_download_to_a_mirror_reuses_the_cache(fake_records, http_server, tmp_path, capsys):
    path, _, _ = fake_records["vgg16"]
    assert main(["download", "vgg16"]) == 0
    assert main(["download", "vgg16", "--to", str(tmp_path / "mirror")]) == 0
    assert http_server.count(f"/models/{path.name}") == 1
    assert (tmp_path / "mirror" / path.name).read_bytes() == path.read_bytes()


def test_download_of_wrong_bytes_fails_and_keeps_nothing(fake_records, http_server, capsys):
    path, _, member = fake_records["vgg16"]
    http_server.add(f"/models/{path.name}", b"x" * path.stat().st_size)
    assert main(["download", "vgg16"]) == 1
    err = capsys.readouterr().err
    assert f"{member}: checksum mismatch" in err and "Traceback" not in err
    assert not (cache_dir() / path.name).exists()


def test_offline_and_not_cached_fails_with_exit_1(fake_records, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    assert main(["download", "vgg11", "vgg16"]) == 1
    assert "2 of 2 downloads failed" in capsys.readouterr().err


def test_verify_checks_names_and_stamps(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    good = save_hub_style({"w": torch.ones(3)}, tmp_path, "resnet")  # a torch.hub name: its digest is checked
    bad = tmp_path / "alexnet-00000000.pth"
    bad.write_bytes(b"not what the name says")
    assert main(["verify", "--json"]) == 1
    assert {r["file"]: r["status"] for r in json.loads(capsys.readouterr().out)} == {
        good.name: "ok",
        bad.name: "corrupt",
    }


def test_cache_clear_removes_only_what_vggnet_wrote_or_verified(fake_records, capsys):
    path, _, _ = fake_records["vgg11"]
    assert main(["download", "vgg11"]) == 0
    folder = cache_dir()
    ours = {
        path.name: None,  # downloaded and stamped: with its stamp
        f"{path.name}.{sha256(path)[:16]}.0a1b2c3d.partial": b"p" * 10,
        f"{path.name}.corrupt-20240102-030405-beef": b"c" * 20,
        "run.pth.unverified.0a1b2c3d.partial": b"u" * 5,
    }
    theirs = {
        "vgg16-397923af.pth": b"torchvision downloaded this",  # an official record's name, never verified by vggnet
        "vgg16-397923af.pth.0123456789abcdef0123456789abcdef.partial": b"torch.hub's temporary",
        "resnet.pth": b"r",
        "resnet.pth.zip": b"z",  # beside resnet.pth, but not a zip copy vggnet wrote
    }
    for name, data in {**ours, **theirs}.items():
        if data is not None:
            (folder / name).write_bytes(data)
    capsys.readouterr()
    assert main(["cache", "--clear", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {f["file"] for f in report["removed"]} == set(ours)
    assert report["freed"] == path.stat().st_size + 35 and report["folder"] == str(folder)
    assert report["skipped"] == []
    assert sorted(n for n in os.listdir(folder) if not n.endswith(".lock")) == sorted(theirs)


def test_cache_remove_takes_any_listed_file(fake_records, capsys):
    path, _, _ = fake_records["vgg16"]
    assert main(["download", "vgg16"]) == 0
    corrupt = cache_dir() / f"{path.name}.corrupt-20240102-030405-beef"
    corrupt.write_bytes(b"c" * 20)
    capsys.readouterr()
    assert main(["cache", "--json"]) == 0
    assert corrupt.name in {f["file"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert main(["cache", "--remove", corrupt.name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == [{"file": corrupt.name, "kind": "corrupt", "size": 20}] and report["freed"] == 20
    assert not corrupt.exists() and (cache_dir() / path.name).exists()  # only that file

    assert main(["cache", "--remove", "vgg16"]) == 0
    assert f"removed {path.name}" in capsys.readouterr().out
    assert not (cache_dir() / path.name).exists()


def test_verify_does_not_vouch_for_an_unchecked_download(http_server, tmp_path, monkeypatch, capsys):
    """A download with no digest to check (no sha256, none in its name) may be incomplete: 'unknown', not 'ok'."""
    from vggnet.hub._fetching import fetch

    monkeypatch.setenv("VGGNET_HOME", str(tmp_path))
    fetch(http_server.add("/plain.pth", b"half of a checkpoint"), progress=False)
    data = b"a whole checkpoint"
    fetch(http_server.add("/mine.pth", data), sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert main(["verify", "--json"]) == 0
    results = {r["file"]: (r["status"], r["against"]) for r in json.loads(capsys.readouterr().out)}
    assert results == {
        "plain.pth": ("unknown", None),
        "mine.pth": ("ok", "the digest recorded when it was verified"),
    }


def test_verify_says_when_the_only_reference_is_the_name(tmp_path, capsys):
    (tmp_path / "run-20240101.pth").write_bytes(b"a checkpoint saved on new year's day")
    assert main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "run-20240101.pth is corrupt or misnamed" in err and "the hex part of its name" in err


@pytest.mark.parametrize("argv", [["cache"], ["cache", "--clear"], ["verify"]])
def test_a_cache_directory_that_is_a_file_is_named_not_listed_as_empty(tmp_path, monkeypatch, capsys, argv):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("not a directory")
    monkeypatch.setenv("VGGNET_HOME", str(not_a_dir))
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"VGGNET_HOME={not_a_dir}" in err and "it is not a directory" in err
    assert not_a_dir.read_text() == "not a directory"


# --- issue 11: a read-only cache, no network, odd files in the cache ------------------------------


def test_download_without_a_network_fails_fast_with_advice_and_no_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VGGNET_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VGGNET_MIRROR", f"http://127.0.0.1:{closed_port()}")  # a server that is not there
    started = time.monotonic()
    assert main(["download", "vgg11"]) == 1
    assert time.monotonic() - started < 10
    out, err = capsys.readouterr()
    record = vggnet.VGG11_Weights.DEFAULT.value
    assert out == "" and "Traceback" not in err
    assert "the connection was refused" in err and f"download {record.url} elsewhere" in err
    for advice in (str(tmp_path / "cache"), "VGGNET_MIRROR", "VGGNET_OFFLINE", "--weights none"):
        assert advice in err


def test_cache_clear_on_a_read_only_cache_names_vggnet_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "cache"
    home.mkdir()
    (home / "x-1a2b3c4d.pth.1a2b3c4d.0a1b2c3d.partial").write_bytes(b"p" * 10)  # vggnet's: --clear takes it
    monkeypatch.setenv("VGGNET_HOME", str(home))
    try:  # root ignores permission bits: a read-only bind mount is what stops it
        subprocess.run(["mount", "--bind", str(home), str(home)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot bind-mount here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True, capture_output=True)
        assert main(["cache", "--clear"]) == 1
    finally:
        subprocess.run(["umount", str(home)], check=True, capture_output=True)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"vggnet: error: the cache directory VGGNET_HOME={home} cannot hold checkpoints: cannot remove"
    )
    assert len(os.listdir(home)) == 1


def test_cache_lists_what_is_not_a_regular_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "cache"
    home.mkdir()
    os.mkfifo(home / "pipe.pth")
    (home / "zero.pth").symlink_to("/dev/zero")
    monkeypatch.setenv("VGGNET_HOME", str(home))
    assert main(["cache", "--json"]) == 0
    files = {f["file"]: f["kind"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert files == {"pipe.pth": "not a regular file", "zero.pth": "not a regular file"}
