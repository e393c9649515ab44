"""vggnet.hub against a real HTTP server on loopback, real files and real processes.

The full-size tests use the session's generated ~528 MiB vgg16 checkpoints (see conftest.py);
everything whose outcome does not depend on size uses a small file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest
import torch

import vggnet.hub as hub
from vggnet.weights import OFFICIAL_BASE, VGG16_Weights, Weights

from .conftest import Checkpoints, Fault, FaultServer, file_sha256, fingerprint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """VGGNET_HOME for one test."""
    home = tmp_path / "cache"
    monkeypatch.setenv("VGGNET_HOME", str(home))
    return home


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "BACKOFF", 0.01)


def record(url: str, ckpt_file: object, **kwargs: object) -> Weights:
    return Weights(url=url, sha256=ckpt_file.sha256, **kwargs)  # type: ignore[attr-defined, arg-type]


def leftovers(folder: Path) -> list[str]:
    """Everything in `folder` but lock files (which filelock may leave behind by design)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    return fingerprint(state)


# --- network faults --------------------------------------------------------------------------------


def test_a_dropped_connection_is_resumed_with_range(http_server, vgg16_checkpoints, cache):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, Fault.drop(after=300 << 20))
    state = hub.load_weights(record(url, ckpt, size=ckpt.size), progress=False)
    assert fingerprint(state) == vgg16_checkpoints.fingerprint
    first, second = http_server.log(path)
    assert first.range is None and first.bytes_sent == 300 << 20
    assert second.status == 206 and second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert resumed_at > 299 << 20  # at most the last read chunk was lost
    assert second.bytes_sent == ckpt.size - resumed_at < ckpt.size
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]
    assert file_sha256(cache / ckpt.name) == ckpt.sha256


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff(http_server, small_checkpoints, cache, fast_retries, status):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(status), Fault.http(status))
    assert hub.fetch(url, progress=False) == cache / ckpt.name
    assert [r.status for r in http_server.log()] == [status, status, 200]


def test_429_honours_retry_after(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(429, {"Retry-After": "1"}))
    started = time.monotonic()
    hub.fetch(url, progress=False)
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in http_server.log()] == [429, 200]


def test_retry_after_is_capped(http_server, small_checkpoints, cache, monkeypatch):
    monkeypatch.setattr(hub, "MAX_WAIT", 0.2)
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(503, {"Retry-After": "3600"}))
    started = time.monotonic()
    hub.fetch(url, progress=False)
    assert time.monotonic() - started < 5


def test_retries_are_bounded(http_server, small_checkpoints, cache, fast_retries):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, *[Fault.http(503)] * 10)
    with pytest.raises(hub.DownloadError, match="503") as info:
        hub.fetch(url, progress=False, retries=2)
    assert url in str(info.value) and info.value.status == 503
    assert http_server.count("/" + ckpt.name) == 3
    assert leftovers(cache) == []


@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_fail_fast(http_server, small_checkpoints, cache, status):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(status))
    started = time.monotonic()
    with pytest.raises(hub.DownloadError) as info:
        hub.fetch(url, progress=False)
    assert time.monotonic() - started < 2
    assert str(status) in str(info.value) and url in str(info.value)
    assert info.value.status == status
    assert http_server.count("/" + ckpt.name) == 1
    assert leftovers(cache) == []


def test_wrong_bytes_raise_checksum_error_and_keep_nothing(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    wrong = small_checkpoints.legacy.path.read_bytes()
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.body(wrong))
    with pytest.raises(hub.ChecksumError, match="no file was kept") as info:
        hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False)
    err = info.value
    assert (err.url, err.path, err.expected) == (url, cache / ckpt.name, ckpt.sha256)
    assert err.actual == hashlib.sha256(wrong).hexdigest()
    assert leftovers(cache) == []  # no final file, no partial, no temporary
    assert pickle.loads(pickle.dumps(err)).actual == err.actual  # crosses process boundaries intact


def test_the_full_digest_is_checked_not_only_its_prefix(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    almost = ckpt.sha256[:-1] + ("0" if ckpt.sha256[-1] != "0" else "1")
    with pytest.raises(hub.ChecksumError):
        hub.fetch(url, sha256=almost, progress=False)
    assert leftovers(cache) == []


def test_bytes_beyond_content_length_are_never_read(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.extra(b"<html>junk</html>" * 100, announce=True))
    path = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert path.stat().st_size == ckpt.size


def test_more_bytes_than_the_record_size_stop_the_download(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.extra(b"x" * (4 << 20), announce=False))
    with pytest.raises(hub.DownloadError, match=f"more than the expected {ckpt.size} bytes"):
        hub.load_weights(record(url, ckpt, size=ckpt.size), progress=False)
    assert leftovers(cache) == []


def test_an_announced_size_other_than_the_record_size_fails_before_reading(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.length(ckpt.size + 1000))
    with pytest.raises(hub.DownloadError, match=f"announces {ckpt.size + 1000} bytes"):
        hub.load_weights(record(url, ckpt, size=ckpt.size), progress=False)
    assert leftovers(cache) == []


def test_official_records_are_bounded_by_their_mib_figure(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    http_server.add("/mirror/" + ckpt.name, ckpt.path, Fault.extra(b"x" * (1 << 20), announce=False))
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/mirror/"))
    official = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256, file_size=round(ckpt.size / 2**20, 3))
    with pytest.raises(hub.DownloadError, match="more than the expected"):
        hub.load_weights(official, progress=False)
    assert leftovers(cache) == []


def test_a_stall_beyond_the_read_timeout_is_retried(http_server, cache, fast_retries):
    data = os.urandom(6 << 20)
    url = http_server.add("/stall-file.bin", data, Fault.stall(after=3 << 20, seconds=5))
    started = time.monotonic()
    path = hub.fetch(url, sha256=hashlib.sha256(data).hexdigest(), timeout=(2.0, 0.5), progress=False)
    assert time.monotonic() - started < 4  # did not sit out the 5 s stall
    assert path.read_bytes() == data
    ranges = [r.range for r in http_server.log("/stall-file.bin")]
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1] != "bytes=0-"


def test_a_server_that_ignores_range_restarts_cleanly(http_server, cache, fast_retries):
    data = os.urandom(5 << 20)
    url = http_server.add("/norange.bin", data, Fault.drop(after=3 << 20), Fault.ignore_range())
    path = hub.fetch(url, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert path.read_bytes() == data
    _, second = http_server.log("/norange.bin")
    assert second.range is not None and second.status == 200 and second.bytes_sent == len(data)


def test_redirects_are_followed(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    http_server.add("/real/" + ckpt.name, ckpt.path)
    url = http_server.add("/moved/" + ckpt.name, b"", Fault.redirect("/real/" + ckpt.name, 301))
    state = hub.load_state_dict_from_url(url, progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert [r.status for r in http_server.log()] == [301, 200]


# --- processes sharing a cache, interruption ---------------------------------------------------------

WORKER = r"""
import json, sys, time
from collections.abc import Iterator
from pathlib import Path
import vggnet.hub as hub
from vggnet.weights import Weights
from tests.conftest import fingerprint
url, sha256, size, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
state = hub.load_weights(Weights(url=url, sha256=sha256, size=int(size)), progress=False)
print(json.dumps({"fingerprint": fingerprint(state), "keys": len(state)}))
"""


def _spawn(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_concurrent_processes_download_once(http_server, vgg16_checkpoints, cache, tmp_path):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, rate=400e6)  # ~1.4 s: long enough for every process to collide
    go = tmp_path / "go"
    workers = [_spawn(WORKER, url, ckpt.sha256, ckpt.size, tmp_path / f"ready{i}", go) for i in range(4)]
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


KILLED = r"""
import sys
import vggnet.hub as hub
hub.fetch(sys.argv[1], sha256=sys.argv[2], progress=False)
"""


def test_sigkill_mid_download_then_the_next_call_resumes(http_server, vgg16_checkpoints, cache):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, rate=150e6)
    victim = _spawn(KILLED, url, ckpt.sha256)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline:
        partial = list(cache.glob("*.partial")) if cache.exists() else []
        if partial and partial[0].stat().st_size > 100 << 20:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert partial, "the download never started"
    assert stat.S_IMODE(partial[0].stat().st_mode) & 0o077 == 0  # private to the user
    assert not (cache / ckpt.name).exists()  # never a file under the final name
    kept = partial[0].stat().st_size
    assert 0 < kept < ckpt.size

    http_server.set_rate(path, None)
    started = time.monotonic()
    got = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert time.monotonic() - started < 30  # the dead holder's lock did not block (LOCK_STALL is 120 s)
    assert file_sha256(got) == ckpt.sha256
    resumed = [r for r in http_server.log(path) if r.range is not None]
    assert [r.range for r in resumed] == [f"bytes={kept}-"]
    assert resumed[0].bytes_sent == ckpt.size - kept
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]


def test_ctrl_c_keeps_only_a_partial_file_and_the_next_call_resumes(http_server, cache, monkeypatch):
    data = os.urandom(6 << 20)
    digest = hashlib.sha256(data).hexdigest()
    url = http_server.add("/ctrl-c.bin", data)
    real_write = hub._Partial.write

    def interrupted(self, chunk):
        if self.size >= 2 << 20:
            raise KeyboardInterrupt
        real_write(self, chunk)

    monkeypatch.setattr(hub._Partial, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.fetch(url, sha256=digest, progress=False)
    (partial,) = leftovers(cache)
    assert partial.startswith("ctrl-c.bin.") and partial.endswith(".partial")
    monkeypatch.setattr(hub._Partial, "write", real_write)
    assert hub.fetch(url, sha256=digest, progress=False).read_bytes() == data
    assert http_server.log("/ctrl-c.bin")[-1].range == "bytes=2097152-"
    assert leftovers(cache) == ["ctrl-c.bin", "ctrl-c.bin.stamp"]


def test_a_live_but_stuck_lock_holder_is_not_waited_for_forever(http_server, small_checkpoints, cache, monkeypatch):
    monkeypatch.setattr(hub, "LOCK_STALL", 0.5)
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    with filelock.FileLock(str(cache / ckpt.name) + ".lock"):  # another holder that never finishes
        assert file_sha256(hub.fetch(url, progress=False)) == ckpt.sha256


# --- security --------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(http_server, cache, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.ones(2), "x": _Payload(marker)}, evil,
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    url = http_server.add("/evil.pth", evil)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pth") as info:
        hub.load_state_dict_from_url(url, sha256=file_sha256(evil), progress=False)
    assert "none of it ran" in str(info.value)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: the refusal above is what stopped it
    assert marker.exists()


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
        hub.load_weights(Weights(url=http_server.url(path), sha256="0" * 64), progress=False)
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


# --- verification without a digest, local files ----------------------------------------------------


def test_the_name_prefix_is_checked_when_no_digest_is_given(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    wrong = "/model-" + ("0" * 8 if not ckpt.sha256.startswith("0" * 8) else "1" * 8) + ".pth"
    url = http_server.add(wrong, ckpt.path)
    with pytest.raises(hub.ChecksumError):
        hub.load_state_dict_from_url(url, progress=False)


def test_no_digest_at_all_downloads_with_a_warning(http_server, small_checkpoints, cache, caplog):
    url = http_server.add("/model.pth", small_checkpoints.zip.path)
    with caplog.at_level(logging.WARNING, logger="vggnet.hub"):
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
    monkeypatch.setattr(hub, "_hash_file", _no_hashing)
    hub.fetch(str(ckpt.path), sha256=ckpt.sha256)  # the stamp vouches for it now
    with pytest.raises(hub.ChecksumError, match="left where it is"):
        hub.fetch(str(ckpt.path), sha256="0" * 64)
    assert ckpt.path.exists()


def _no_hashing(path: Path) -> str:
    raise AssertionError(f"{path} was hashed again although its stamp matches")


def test_a_non_state_dict_is_refused(tmp_path, cache):
    odd = tmp_path / "odd.pth"
    torch.save([torch.ones(1)], odd)
    with pytest.raises(TypeError, match="does not hold a state dict"):
        hub.load_state_dict_from_url(str(odd), sha256=file_sha256(odd))


def test_a_training_checkpoint_is_unwrapped(tmp_path, cache):
    path = tmp_path / "train.pth"
    torch.save({"epoch": 3, "state_dict": {"w": torch.arange(3.0)}, "optimizer": {}}, path)
    state = hub.load_state_dict_from_url(str(path), sha256=file_sha256(path))
    assert list(state) == ["w"] and state["w"].tolist() == [0.0, 1.0, 2.0]


# --- offline, mirrors, torch.hub's cache -----------------------------------------------------------


def test_offline_without_the_file_names_file_url_and_folder(cache, monkeypatch):
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    official = VGG16_Weights.IMAGENET1K_V1.value
    with pytest.raises(FileNotFoundError) as info:
        hub.load_weights(official)
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and official.url in message and str(cache) in message


def test_offline_with_the_file_never_touches_the_network(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    hub.load_weights(record(url, ckpt), progress=False)
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    state = hub.load_weights(record(url, ckpt), progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/" + ckpt.name) == 1
    placed = small_checkpoints.legacy  # put in by hand: no stamp yet, so it is hashed once
    (cache / placed.name).write_bytes(placed.path.read_bytes())
    state = hub.load_weights(record(http_server.url("/" + placed.name), placed), progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/" + placed.name) == 0


def test_mirror_over_http(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    http_server.add("/mirror/" + ckpt.name, ckpt.path)
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/mirror"))
    state = hub.load_weights(Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256), progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert http_server.count("/mirror/" + ckpt.name) == 1
    bad = small_checkpoints.legacy  # a mirror holding the wrong bytes under the name is caught
    http_server.add("/mirror/" + bad.name, ckpt.path)
    with pytest.raises(hub.ChecksumError):
        hub.load_weights(Weights(url=OFFICIAL_BASE + bad.name, sha256=bad.sha256), progress=False)


@pytest.mark.parametrize("as_uri", [False, True], ids=["directory", "file-url"])
def test_mirror_as_a_directory(small_checkpoints, cache, monkeypatch, as_uri):
    ckpt = small_checkpoints.zip
    mirror = ckpt.path.parent
    monkeypatch.setenv("VGGNET_MIRROR", mirror.as_uri() if as_uri else str(mirror))
    state = hub.load_weights(Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256), progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert not (cache / ckpt.name).exists()  # used in place
    with pytest.raises(hub.ChecksumError):
        hub.load_weights(Weights(url=OFFICIAL_BASE + ckpt.name, sha256="0" * 64), progress=False)


def test_a_file_in_torch_hubs_cache_is_used_only_if_it_matches(http_server, small_checkpoints, cache, _isolated_cache):
    ckpt = small_checkpoints.zip
    torch_dir = _isolated_cache / "hub" / "checkpoints"
    torch_dir.mkdir(parents=True)
    (torch_dir / ckpt.name).write_bytes(b"not the checkpoint")
    url = http_server.add("/" + ckpt.name, ckpt.path)
    hub.load_weights(record(url, ckpt), progress=False)
    assert http_server.count("/" + ckpt.name) == 1  # the wrong file was ignored ...
    assert (torch_dir / ckpt.name).read_bytes() == b"not the checkpoint"  # ... and left alone

    right = small_checkpoints.legacy
    (torch_dir / right.name).write_bytes(right.path.read_bytes())
    url = http_server.add("/" + right.name, right.path)
    state = hub.load_weights(record(url, right), progress=False)
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
    state = hub.load_weights(Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256), progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert (tmp_path / "not-yet-created" / ckpt.name).is_file()


def test_without_vggnet_home_the_cache_is_torch_hubs(_isolated_cache):
    assert hub.cache_dir() == _isolated_cache / "hub" / "checkpoints"


# --- cache hits ------------------------------------------------------------------------------------


def test_a_cache_hit_trusts_its_stamp(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    hub.load_weights(record(url, ckpt), progress=False)
    stamp = json.loads((cache / (ckpt.name + ".stamp")).read_text())
    assert stamp["sha256"] == ckpt.sha256 and stamp["size"] == ckpt.size
    monkeypatch.setattr(hub, "_hash_file", _no_hashing)
    hub.load_weights(record(url, ckpt), progress=False)
    assert http_server.count("/" + ckpt.name) == 1


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_flipped_byte_is_detected_moved_aside_and_fetched_again(http_server, small_checkpoints, cache, monkeypatch,
                                                                  offline):  # fmt: skip
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    hub.load_weights(record(url, ckpt), progress=False)
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
        with pytest.raises(hub.ChecksumError, match="moved aside"):
            hub.load_weights(record(url, ckpt), progress=False)
        assert not cached.exists()
    else:
        state = hub.load_weights(record(url, ckpt), progress=False)
        assert fingerprint(state) == small_checkpoints.fingerprint
        assert http_server.count("/" + ckpt.name) == 2
        assert file_sha256(cached) == ckpt.sha256
    (aside,) = cache.glob(ckpt.name + ".corrupt-*")
    assert file_sha256(aside) != ckpt.sha256


def test_a_legacy_file_is_loaded_through_a_verified_zip_copy(http_server, vgg16_checkpoints, cache, monkeypatch):
    ckpt = vgg16_checkpoints.legacy
    url = http_server.add("/" + ckpt.name, ckpt.path)
    state = hub.load_weights(record(url, ckpt, size=ckpt.size), progress=False)
    assert fingerprint(state) == vgg16_checkpoints.fingerprint
    copy = cache / (ckpt.name + ".zip")
    with open(copy, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"
    del state
    monkeypatch.setattr(hub, "_convert", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setattr(hub, "_hash_file", _no_hashing)
    state = hub.load_weights(record(url, ckpt, size=ckpt.size), progress=False)
    assert fingerprint(state) == vgg16_checkpoints.fingerprint
    assert len(state) == len(vgg16_checkpoints.keys)


def test_a_damaged_zip_copy_is_made_again(small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.legacy
    hub.load_state_dict_from_url(str(ckpt.path), sha256=ckpt.sha256)
    copy = cache / (ckpt.name + ".zip")
    copy.write_bytes(b"PK\x03\x04 damaged")
    state = hub.load_state_dict_from_url(str(ckpt.path), sha256=ckpt.sha256)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert copy.stat().st_size > 100


def test_importing_vggnet_touches_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "TORCH_HOME": str(home / "torch"), "VGGNET_HOME": str(home / "v")}
    subprocess.run([sys.executable, "-c", "import vggnet, vggnet.hub"], cwd=ROOT, env=env, check=True)
    assert list(home.iterdir()) == []


def test_checkpoints_fixture_formats(vgg16_checkpoints: Checkpoints):
    with open(vgg16_checkpoints.zip.path, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"
    with open(vgg16_checkpoints.legacy.path, "rb") as f:
        assert f.read(4) != b"PK\x03\x04"
    assert vgg16_checkpoints.zip.size > 527 << 20  # 138,357,544 float32 parameters


def test_fault_server_counts(http_server: FaultServer):
    url = http_server.add("/x", b"0123456789")
    import requests

    assert requests.get(url, headers={"Range": "bytes=4-"}, timeout=5).content == b"456789"
    assert http_server.log("/x")[0].status == 206 and http_server.bytes_served("/x") == 6


# --- the maintainer tool that pins the official digests --------------------------------------------


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


# --- the cache, as `vggnet cache` and `vggnet verify` read it ---------------------------------------


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
    entries = {e.path.name: e for e in hub.cached_files()}
    assert [e.path for e in hub.cached_files()] == sorted(cache / name for name in entries)
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
    assert hub.cached_files(cache) == hub.cached_files()
    assert hub.cached_files(tmp_path / "missing") == []


def test_remove_cached_takes_everything_that_belongs_to_a_checkpoint(http_server, small_checkpoints, cache):
    fill_cache(http_server, small_checkpoints, cache)
    legacy, other = small_checkpoints.legacy.name, small_checkpoints.zip.name
    removed = hub.remove_cached(legacy, "not-cached.pth")
    assert [e.path.name for e in removed.files] == [legacy, f"{legacy}.zip"] and removed.skipped == ()
    assert not any(p.exists() for e in removed.files for p in (e.path, *e.related))
    assert removed.freed == sum(e.size for e in removed.files)
    assert {e.base for e in hub.cached_files()} == {other, "notes.txt"}
    assert (cache / ".stamps").is_dir()

    removed = hub.remove_cached(other, folder=cache, local_stamps=True)
    assert sorted(e.kind for e in removed.files) == ["corrupt", "partial"]
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


def test_verify_file_hashes_afresh_and_reports_progress(small_checkpoints, tmp_path):
    ckpt = small_checkpoints.zip
    path = tmp_path / ckpt.name
    path.write_bytes(ckpt.path.read_bytes())
    seen: list[int] = []
    assert hub.verify_file(path, ckpt.sha256[:8], progress=seen.append) == ckpt.sha256
    assert sum(seen) == ckpt.size and hub.verify_file(str(path)) == ckpt.sha256
    assert not (tmp_path / f"{ckpt.name}.stamp").exists()  # nothing written

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    hub._write_stamp(path, ckpt.sha256, checked=True)  # a stamp that fits the file's stat but not its bytes
    assert hub._stamped_digest(path) == ckpt.sha256
    with pytest.raises(hub.ChecksumError) as caught:
        hub.verify_file(path, ckpt.sha256)
    assert (caught.value.expected, caught.value.actual) == (ckpt.sha256, hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data and hub._stamped_digest(path) == ckpt.sha256  # left as it was


def test_add_to_mirror_downloads_or_links_from_the_cache(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    weights = record(http_server.add("/" + ckpt.name, ckpt.path), ckpt, size=ckpt.size)
    path = hub.add_to_mirror(weights, tmp_path / "first", progress=False)
    assert path == tmp_path / "first" / ckpt.name and file_sha256(path) == ckpt.sha256
    assert http_server.count("/" + ckpt.name) == 1 and not cache.exists()  # into the mirror, not the cache

    cached = hub.fetch(weights.url, sha256=ckpt.sha256, progress=False)
    path = hub.add_to_mirror(weights, str(tmp_path / "second"), progress=False)
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


# --- only vggnet's own files are its bookkeeping ----------------------------------------------------


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
    entries = {e.path.name: e for e in hub.cached_files()}
    for name in strangers:
        assert (entries[name].kind, entries[name].base, entries[name].ours) == ("checkpoint", name, False)
    assert entries["notes.txt"].ours is False
    ours = {name for name, e in entries.items() if e.ours}
    assert ours == {
        legacy, f"{legacy}.zip", f"{small_checkpoints.zip.name}.{small_checkpoints.zip.sha256[:16]}.0a1b2c3d.partial",
        f"{small_checkpoints.zip.name}.corrupt-20240102-030405-beef",
    }  # fmt: skip

    removed = hub.remove_cached(*ours)
    assert {e.path.name for e in removed.files} == ours
    assert sorted(leftovers(cache)) == sorted([".stamps", "notes.txt", *strangers])


def test_remove_cached_takes_one_listed_file_alone(http_server, small_checkpoints, cache):
    fill_cache(http_server, small_checkpoints, cache)
    legacy, other = small_checkpoints.legacy.name, small_checkpoints.zip.name
    corrupt = f"{other}.corrupt-20240102-030405-beef"
    assert [e.path.name for e in hub.remove_cached(corrupt).files] == [corrupt]
    assert [e.path.name for e in hub.remove_cached(f"{legacy}.zip").files] == [f"{legacy}.zip"]
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
    downloader = _spawn(LIVE_DOWNLOAD, url, digest)
    deadline = time.monotonic() + 30
    while not (cache.exists() and any(p.stat().st_size for p in cache.glob("*.partial"))):
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)
    entries = hub.cached_files()
    assert [e.kind for e in entries] == ["partial"]
    removed = hub.remove_cached("live.bin")
    assert removed.files == () and sorted(p.name for p in removed.skipped) == [entries[0].path.name, "live.bin.lock"]
    out, err = downloader.communicate(timeout=60)
    assert downloader.returncode == 0, err
    assert Path(out.strip()).read_bytes() == data
    removed = hub.remove_cached("live.bin")  # now that it is done, everything goes
    assert [e.path.name for e in removed.files] == ["live.bin"] and removed.skipped == ()
    assert os.listdir(cache) == []


# --- what a stamp vouches for ----------------------------------------------------------------------


def test_a_download_without_any_digest_is_stamped_unchecked(http_server, small_checkpoints, cache):
    """Without a digest and without Content-Length, a transfer cut short looks complete: its stamp must not vouch."""
    data = small_checkpoints.zip.path.read_bytes()
    url = http_server.add("/plain.pth", data[: len(data) // 2], Fault.extra(b"", announce=False))
    hub.fetch(url, progress=False)
    (entry,) = hub.cached_files()
    assert entry.sha256 == hashlib.sha256(data[: len(data) // 2]).hexdigest() and entry.checked is False

    ckpt = small_checkpoints.zip
    url = http_server.add("/checked.pth", ckpt.path)
    hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert {e.path.name: e.checked for e in hub.cached_files()} == {"checked.pth": True, "plain.pth": False}


def test_a_stamp_is_marked_checked_once_a_digest_confirms_it(small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    cache.mkdir()
    shutil.copyfile(ckpt.path, cache / "mine.pth")
    hub.fetch("https://example.invalid/mine.pth", progress=False)  # a cache hit, hashed and stamped unchecked
    assert hub.cached_files()[0].checked is False
    hub.fetch("https://example.invalid/mine.pth", sha256=ckpt.sha256[:8], progress=False)
    assert hub.cached_files()[0].checked is True


# --- digests in names ------------------------------------------------------------------------------


def test_a_local_files_name_is_not_taken_for_a_digest(small_checkpoints, tmp_path, cache, caplog):
    local = tmp_path / "vgg11-epoch-00000010.pth"
    shutil.copyfile(small_checkpoints.zip.path, local)
    for source in (str(local), local.as_uri()):
        with caplog.at_level(logging.WARNING, logger="vggnet.hub"):
            assert fingerprint(hub.load_state_dict_from_url(source)) == small_checkpoints.fingerprint
        assert "unverified" in caplog.text
    with pytest.raises(hub.ChecksumError):  # an explicit digest still is
        hub.fetch(str(local), sha256="0" * 64)


def test_a_url_names_digest_mismatch_says_where_the_digest_came_from(http_server, small_checkpoints, cache):
    url = http_server.add("/run-20240101.pth", small_checkpoints.zip.path)
    with pytest.raises(hub.ChecksumError) as info:
        hub.fetch(url, progress=False)
    message = str(info.value)
    assert "hex part of the file name" in message and "sha256=" in message and "retry" not in message
    assert info.value.expected == "20240101"
    assert hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False).name == "run-20240101.pth"


def test_offline_a_corrupt_cached_file_does_not_say_retry(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    weights = record(url, ckpt)
    hub.load_weights(weights, progress=False)
    (cache / ckpt.name).write_bytes(b"x" * ckpt.size)
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(hub.ChecksumError) as info:
        hub.load_weights(weights, progress=False)
    assert "retry" not in str(info.value) and "Unset VGGNET_OFFLINE" in str(info.value)


def test_a_names_digest_mismatch_offline_keeps_the_offline_advice(http_server, small_checkpoints, cache, monkeypatch):
    url = http_server.add("/run-20240101.pth", small_checkpoints.zip.path)
    cache.mkdir()
    (cache / "run-20240101.pth").write_bytes(small_checkpoints.zip.path.read_bytes())  # not 20240101...
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(hub.ChecksumError) as info:
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
    with pytest.raises(hub.ChecksumError) as info:
        hub.fetch(OFFICIAL_BASE + "run-20240101.pth", progress=False)
    message = str(info.value)
    assert "replace it with a good copy" in message and "retry" not in message and "hex part" not in message
    assert (mirror / "run-20240101.pth").is_file()  # left where it is


# --- mirrors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_a_mirror_directory_comes_after_the_cache(http_server, small_checkpoints, cache, tmp_path, monkeypatch, as_uri):
    ckpt = small_checkpoints.zip
    weights = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256)
    cache.mkdir()
    shutil.copyfile(ckpt.path, cache / ckpt.name)
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("VGGNET_MIRROR", empty.as_uri() if as_uri else str(empty))
    assert fingerprint(hub.load_weights(weights, progress=False)) == small_checkpoints.fingerprint

    (cache / ckpt.name).unlink()
    with pytest.raises(FileNotFoundError) as info:
        hub.load_weights(weights, progress=False)
    message = str(info.value)
    assert "VGGNET_MIRROR" in message and str(empty) in message and OFFICIAL_BASE + ckpt.name in message


@pytest.mark.parametrize("mirror", ["ftp://example.org/models", "s3://bucket/models"])
def test_a_mirror_with_an_unsupported_scheme_is_refused(small_checkpoints, cache, monkeypatch, mirror):
    monkeypatch.setenv("VGGNET_MIRROR", mirror)
    with pytest.raises(ValueError, match=r"VGGNET_MIRROR='.*' has the unsupported scheme .* or a local directory"):
        hub.load_weights(Weights(url=OFFICIAL_BASE + "vgg16-397923af.pth", sha256="397923af"), progress=False)
    assert not cache.exists()


def test_add_to_mirror_replaces_a_corrupt_cached_copy_from_the_url(http_server, small_checkpoints, cache, tmp_path):
    ckpt = small_checkpoints.zip
    weights = record(http_server.add("/" + ckpt.name, ckpt.path), ckpt, size=ckpt.size)
    hub.fetch(weights.url, sha256=ckpt.sha256, progress=False)
    (cache / ckpt.name).write_bytes(b"y" * ckpt.size)  # the stamp no longer fits: hashed, found wrong
    path = hub.add_to_mirror(weights, tmp_path / "mirror", progress=False)
    assert file_sha256(path) == ckpt.sha256 and http_server.count("/" + ckpt.name) == 2
    assert [e.kind for e in hub.cached_files()] == ["corrupt"]  # moved aside, as a load would


# --- the cache directory itself --------------------------------------------------------------------


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


# --- arguments -------------------------------------------------------------------------------------


def test_size_is_enforced_for_local_files_too(small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    with pytest.raises(ValueError, match=f"has {ckpt.size:,} bytes, not the 123 that size= says"):
        hub.fetch(str(ckpt.path), sha256=ckpt.sha256, size=123)
    with pytest.raises(ValueError, match="size= says"):
        hub.fetch(str(ckpt.path), size=123)  # no digest: the size is all there is to check
    assert hub.fetch(str(ckpt.path), sha256=ckpt.sha256, size=ckpt.size) == ckpt.path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer >= 0"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": (10.0, -1.0)}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"size": 0}, "size must be a positive byte count"),
    ],
)
def test_nonsense_limits_are_refused_before_any_request(http_server, small_checkpoints, cache, kwargs, message):
    url = http_server.add("/limits.pth", small_checkpoints.zip.path)
    with pytest.raises(ValueError, match=message):
        hub.fetch(url, progress=False, **kwargs)
    assert http_server.count("/limits.pth") == 0
