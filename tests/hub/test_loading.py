"""vggnet.hub._loading: the weights-only load of the verified open file, the state dict it must hold, legacy zip copies.

Loads go through `hub.load_state_dict_from_url` and `Weights.get_state_dict`, as users call them; the full-size
test uses the session's generated ~528 MiB vgg16 checkpoints (see conftest.py).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from pathlib import Path

import pytest
import torch

import vggnet.hub._admin as vadmin
import vggnet.hub._cache as vcache
import vggnet.hub._fetching as hub
import vggnet.hub._loading as loading
from tests.helpers import file_sha256, fingerprint, no_hashing, record
from vggnet import errors


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --- pickled code is refused before any of it runs -------------------------------------------------


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


def test_a_refused_pickle_names_the_global_and_gives_no_advice_to_drop_weights_only(http_server, cache, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.ones(2), "x": _Payload(marker)}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(errors.UnsafeCheckpointError) as info:
        hub.load_state_dict_from_url(http_server.add("/evil.pth", evil), sha256=file_sha256(evil), progress=False)
    message = str(info.value)
    assert info.value.reference is not None and info.value.reference in message and "\n" not in message
    assert "weights_only=False" not in message and "add_safe_globals" not in message and info.value.__cause__ is None
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert not marker.exists()


# --- legacy-format files: a verified zip copy ------------------------------------------------------


def test_a_legacy_file_is_loaded_through_a_verified_zip_copy(http_server, vgg16_checkpoints, cache, monkeypatch):
    ckpt = vgg16_checkpoints.legacy
    url = http_server.add("/" + ckpt.name, ckpt.path)
    state = record(url, ckpt, size=ckpt.size).get_state_dict(progress=False)
    assert fingerprint(state) == vgg16_checkpoints.fingerprint
    copy = cache / (ckpt.name + ".zip")
    with open(copy, "rb") as f:
        assert f.read(4) == b"PK\x03\x04"
    del state
    monkeypatch.setattr(loading, "_convert", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setattr(vcache, "hash_file", no_hashing)  # the stamps vouch for the file and its copy
    monkeypatch.setattr(loading, "hash_file", no_hashing)
    state = record(url, ckpt, size=ckpt.size).get_state_dict(progress=False)
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


# --- issue 11: what is loaded is what was verified -------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_file_swapped_during_loads_never_loads_other_bytes(
    http_server, small_checkpoints, cache, tmp_path, zip_format
):
    ckpt = small_checkpoints.zip if zip_format else small_checkpoints.legacy
    url = http_server.add("/" + ckpt.name, ckpt.path)
    hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False)  # cached and stamped
    other = tmp_path / "other.pth"  # a valid checkpoint, but not the verified one
    torch.save({k: torch.zeros_like(v) for k, v in torch.load(ckpt.path).items()}, other)
    good = tmp_path / "good.pth"
    os.link(cache / ckpt.name, good)  # the verified inode itself, so its stamp may still describe it
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set():
            tmp = cache / f".swap{i}"  # a hidden name: not the cache's business
            os.link(other if i % 2 == 0 else good, tmp)
            os.replace(tmp, cache / ckpt.name)
            i += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    loaded = refused = 0
    started = time.monotonic()
    try:
        while loaded + refused < 150 and time.monotonic() - started < 60:
            try:
                state = hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False)
            except errors.ChecksumError:  # it changed after its check: refused, never loaded
                refused += 1
                continue
            assert fingerprint(state) == small_checkpoints.fingerprint, f"loaded other bytes after {loaded} loads"
            loaded += 1
    finally:
        stop.set()
        swapper.join()
    assert loaded > 0 and time.monotonic() - started < 90


def test_loading_an_unpinned_file_does_not_mark_its_stamp_checked(http_server, small_checkpoints, cache):
    url = http_server.add("/plain.pth", small_checkpoints.zip.path)  # no digest anywhere
    state = hub.load_state_dict_from_url(url, progress=False)  # checked again, from the open file, before loading
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert [(e.path.name, e.checked) for e in vadmin.cached_files()] == [("plain.pth", False)]


# --- what a checkpoint file may hold (issue 11 item 5) ---------------------------------------------


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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3, "name": "run", "lr": 0.1}, r"entries 'epoch' \(int\), 'name' \(str\), 'lr' \(float\) are"),
        ({"model": {"state_dict": {"w": torch.ones(1)}}, "n": 1}, r"at checkpoint\['model'\]\['state_dict'\];"),
        ({"state_dict": {"state_dict": {"w": torch.ones(1)}}}, r"at checkpoint\['state_dict'\]\['state_dict'\]; save"),
        ({"net": {"w": torch.ones(1)}, "step": 9}, r"the tensors are at checkpoint\['net'\]"),
        ({"x" * 5000: 1}, r"its entries 'xxxx+\.\.\. \(int\) are not"),  # a hostile key is cut short
    ],
)  # fmt: skip
def test_a_file_without_a_state_dict_where_vggnet_looks_says_where_it_is(tmp_path, cache, content, message):
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    with pytest.raises(errors.BadCheckpointError, match=message) as info:
        hub.load_state_dict_from_url(str(path), sha256=file_sha256(path))
    assert isinstance(info.value, TypeError) and len(str(info.value)) < 600 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"", "EOFError"), (b"hello, this is not a checkpoint", "KeyError"), (b"PK\x03\x04" + bytes(200), "zip archive")],
)
def test_a_file_that_is_no_checkpoint_is_named_in_one_line(tmp_path, cache, data, problem):
    path = tmp_path / "not-a-checkpoint.pth"
    path.write_bytes(data)
    with pytest.raises(RuntimeError, match=rf"^{path} could not be read as a PyTorch checkpoint .*{problem}") as info:
        hub.load_state_dict_from_url(str(path), sha256=file_sha256(path))
    assert "\n" not in str(info.value)
