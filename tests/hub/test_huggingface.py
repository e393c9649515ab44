"""vggnet.hub._huggingface: hf-hub: weights fetched under the hub's rules into huggingface_hub's cache layout,
against `FakeHub` (tests/server.py) on loopback standing in for the Hub (HF_ENDPOINT).

The Hub's answer is checked before it names anything on disk (issue 24: huggingface_hub 2.4.0 wrote outside its
cache for an ETag of "../../x", loaded a planted file, took an upper-case SHA-256 for no digest, and could not be
bounded by a deadline). huggingface_hub itself is only the reference for the cache layout: it reads what vggnet
wrote, and vggnet reads what it wrote, after checking it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import vggnet
from vggnet import errors
from vggnet.hub import _huggingface as hfhub
from vggnet.hub._huggingface import HubFetched, HubName, hf_hub_fetch, parse_hf_hub
from vggnet.models import layouts
from vggnet.models.checkpoint import hub_state_dict
from vggnet.models.sources import hub_arch_of

from ..server import COMMIT_A, COMMIT_B, FakeHub

safetensors_torch = pytest.importorskip("safetensors.torch")

REPO = "timm/vgg16.tv_in1k"
FILE = "model.safetensors"
FOLDER = "models--timm--vgg16.tv_in1k"


def weights(seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3, generator=g),
        "features.0.bias": torch.randn(64, generator=g),
    }
    return bytes(safetensors_torch.save(state))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def gets(hub: FakeHub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET"]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture(autouse=True)
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: FakeHub, cache: Path) -> None:
    """The Hub is the FakeHub, its cache a fresh folder, HF_HOME too (no saved token); nothing offline."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH",
                 "HF_HUB_DISABLE_IMPLICIT_TOKEN", "VGGNET_DOWNLOAD_DEADLINE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def hf_hub() -> Any:
    """huggingface_hub itself, the reference for the cache layout (no longer needed to load hf-hub: names)."""
    return pytest.importorskip("huggingface_hub")


def fetch(**kwargs: Any) -> HubFetched:
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("filename", FILE)
    return hf_hub_fetch(REPO, **kwargs)


# --- names ----------------------------------------------------------------------------------------------------


def test_parse_names(hub: FakeHub) -> None:
    assert parse_hf_hub("hf-hub:timm/vgg16.tv_in1k") == HubName("timm/vgg16.tv_in1k", None)
    assert parse_hf_hub("hf-hub:timm/vgg19_bn.tv_in1k@abc") == HubName("timm/vgg19_bn.tv_in1k", "abc")
    with pytest.raises(ValueError, match="hf-hub:owner/repository"):
        parse_hf_hub("timm/vgg16.tv_in1k")
    for bad in ("hf-hub:vgg16", "hf-hub:timm/../x", "hf-hub:a--b/c", "hf-hub:timm/vgg16.tv_in1k@../../x"):
        with pytest.raises(errors.UsageError):
            parse_hf_hub(bad)
    with pytest.raises(ValueError, match=r"vgg11, vgg11_bn.*vgg19_bn"):
        hub_arch_of("hf-hub:timm/resnet50.a1_in1k")
    assert hub_arch_of("hf-hub:timm/vgg19_bn.tv_in1k@abc") == "vgg19_bn"
    assert hub.requests == []


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a//b", "a\\b", "."])
def test_hostile_names_from_the_caller_are_refused_without_a_request(hub: FakeHub, name: str) -> None:
    for call in (lambda: fetch(filename=name), lambda: fetch(revision=name), lambda: hf_hub_fetch(f"timm/{name}")):
        with pytest.raises(errors.UsageError):
            call()
    assert hub.requests == []


# --- the happy path, and huggingface_hub reading what was written ---------------------------------------------


def test_download_lays_out_the_cache_as_huggingface_hub_does(hub: FakeHub, cache: Path, hf_hub: Any) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    got = fetch()
    storage = cache / FOLDER
    assert got.sha256 == sha(data) and got.commit == COMMIT_A
    assert got.blob == storage / "blobs" / sha(data) and got.blob.read_bytes() == data
    assert got.path == storage / "snapshots" / COMMIT_A / FILE
    assert os.readlink(got.path) == f"../../blobs/{sha(data)}"  # relative, as huggingface_hub links
    assert (storage / "refs" / "main").read_text() == COMMIT_A
    assert not [n for n in os.listdir(storage / "blobs") if n.endswith((".partial", ".incomplete", ".tmp"))]
    assert [m for m, _, _ in hub.requests] == ["HEAD", "GET"]

    assert hf_hub.try_to_load_from_cache(REPO, FILE, cache_dir=cache) == str(got.path)
    assert hf_hub.hf_hub_download(REPO, FILE, cache_dir=cache, local_files_only=True) == str(got.path)
    hub.requests.clear()
    assert hf_hub.hf_hub_download(REPO, FILE, cache_dir=cache, endpoint=hub.endpoint) == str(got.path)
    assert gets(hub) == []  # huggingface_hub found the blob: nothing downloaded again
    (repo,) = hf_hub.scan_cache_dir(cache).repos
    assert repo.repo_id == REPO and repo.size_on_disk == len(data)

    hub.requests.clear()
    assert fetch() == got and gets(hub) == []  # a second call: one HEAD, the blob is already there


def test_what_huggingface_hub_downloaded_is_checked_before_use(
    hub: FakeHub, cache: Path, hf_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    path = hf_hub.hf_hub_download(REPO, FILE, cache_dir=cache, endpoint=hub.endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = fetch()
    assert str(got.path) == path and got.sha256 == sha(data)
    Path(path).resolve().write_bytes(weights(seed=1))  # what huggingface_hub keeps of a same-size wrong body
    with pytest.raises(errors.ChecksumError, match="name of its blob"):
        fetch()


def test_huggingface_hub_is_not_needed(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub: ImportError
    hub.put(REPO, FILE, weights())
    state = hfhub.load_hf_hub(f"hf-hub:{REPO}")
    assert torch.equal(state["features.0.bias"], safetensors_torch.load(weights())["features.0.bias"])


@pytest.mark.slow  # two fresh processes
def test_loads_convert_cache_and_work_offline_without_huggingface_hub(hub: FakeHub, cache: Path, tmp_path) -> None:
    """A user's process, huggingface_hub made unimportable: download, timm's layout undone bit-exactly, offline."""
    g = torch.Generator().manual_seed(0)
    state = {"features.0.weight": torch.randn(64, 3, 3, 3, generator=g), "classifier.0.weight": torch.randn(16, 25088,
             generator=g), "classifier.3.weight": torch.randn(16, 16, generator=g)}  # fmt: skip
    layouts.write_state_dict(state, tmp_path / "timm.safetensors", layout="timm")
    hub.put("timm/vgg11.tv_in1k", FILE, (tmp_path / "timm.safetensors").read_bytes())
    out = tmp_path / "state.safetensors"
    code = f"""
import json, sys
sys.modules["huggingface_hub"] = None  # import huggingface_hub: ImportError
from vggnet.hub import save_safetensors
from vggnet.models.checkpoint import hub_state_dict
arch, state = hub_state_dict("hf-hub:timm/vgg11.tv_in1k")
save_safetensors(state, {str(out)!r})
print(json.dumps({{"arch": arch}}))
"""
    for offline in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": offline})  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.splitlines()[-1]) == {"arch": "vgg11"}
        back = safetensors_torch.load_file(out)
        assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
        assert len(gets(hub)) == 1  # the second, offline, made no request at all
    hub.requests.clear()


# --- the token goes to the Hub only -----------------------------------------------------------------------------


def test_a_redirect_to_another_origin_gets_no_token(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    data = weights()
    hub.put(REPO, FILE, data, redirect=True)
    hub.cdn_base = hub.endpoint.replace("127.0.0.1", "localhost")  # the same server, another origin: a CDN
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert fetch().blob.read_bytes() == data
    assert hub.requests == [
        ("HEAD", f"/{REPO}/resolve/main/{FILE}", "Bearer hf_secret"),
        ("GET", f"/cdn/{sha(data)}", None),
    ]


def test_the_token_goes_with_a_download_from_the_hub_itself(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.put(REPO, FILE, weights())
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_saved\n")  # what `hf auth login` saves
    fetch()
    assert [auth for _, _, auth in hub.requests] == ["Bearer hf_saved"] * 2
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    hub.requests.clear()
    fetch()
    assert {auth for _, _, auth in hub.requests} == {None}


def test_settings_come_from_the_environment(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vggnet import settings

    hub.put(REPO, FILE, weights())
    monkeypatch.delenv("HF_HUB_CACHE")
    assert settings.hf_hub_cache() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert fetch().path.is_relative_to(tmp_path / "elsewhere" / FOLDER)
    monkeypatch.setenv("HF_ENDPOINT", "ftp://example.org")
    with pytest.raises(errors.UsageError, match="HF_ENDPOINT"):
        fetch()


# --- what the Hub says is checked before it names anything -----------------------------------------------------


@pytest.mark.parametrize(
    "etag",
    [
        '"../../../outside/pwned"',
        "../../../outside/pwned",
        'W/"../../../outside/pwned"',
        '"{tmp}/outside/pwned"',  # absolute: os.path.join would drop the cache folder altogether
        f'"{"a" * 64}/../../../../outside/pwned"',
        f'"{"a" * 63}"',
        '""',
    ],
)
def test_an_etag_that_is_not_a_sha256_is_refused_before_anything_is_written(
    hub: FakeHub, cache: Path, tmp_path: Path, etag: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pwned").write_bytes(weights(seed=666))  # huggingface_hub would link to it and load it
    hub.put(REPO, FILE, weights(), headers={"X-Linked-Etag": etag.format(tmp=tmp_path)})
    with pytest.raises(errors.HubResponseError, match="is not a SHA-256"):
        fetch()
    assert files_under(outside) == ["pwned"] and (outside / "pwned").read_bytes() == weights(seed=666)
    assert files_under(cache) == [] and gets(hub) == []


@pytest.mark.parametrize("commit", ["../../../outside", "0123456789abcdef", "g" * 40, f"{COMMIT_A}/..", None])
def test_a_commit_that_is_not_40_hex_digits_is_refused(
    hub: FakeHub, cache: Path, tmp_path: Path, commit: str | None
) -> None:
    hub.put(REPO, FILE, weights(), headers={"X-Repo-Commit": commit})
    with pytest.raises(errors.HubResponseError, match="commit hash"):
        fetch()
    assert files_under(cache) == [] and not (tmp_path / "outside").exists() and gets(hub) == []


def test_a_404_writes_nothing_even_with_a_hostile_commit(hub: FakeHub, tmp_path: Path) -> None:
    hub.not_found_headers = {"X-Repo-Commit": "../../../outside-404"}  # huggingface_hub touches .no_exist/<this>/file
    before = files_under(tmp_path)
    with pytest.raises(errors.HubResponseError, match=f"the Hub has no {FILE} at {REPO}@main: HTTP 404") as err:
        fetch()
    assert err.value.status == 404 and errors.exit_code(err.value) == 1
    assert files_under(tmp_path) == before


def test_a_file_outside_lfs_is_refused(hub: FakeHub) -> None:
    hub.put(REPO, FILE, weights(), headers={"X-Linked-Etag": None})  # only the git blob's sha1 ETag is left
    with pytest.raises(errors.HubResponseError, match="not a SHA-256"):
        fetch()


@pytest.mark.parametrize("header", ["X-Linked-Etag", "ETag"])
def test_an_upper_case_etag_is_a_sha256(hub: FakeHub, header: str) -> None:
    data = weights()
    headers = {"X-Linked-Etag": f'"{sha(data).upper()}"'} if header == "X-Linked-Etag" else {
        "X-Linked-Etag": None, "ETag": f'W/"{sha(data).upper()}"'}  # fmt: skip
    hub.put(REPO, FILE, data, headers=headers)
    got = fetch()
    assert got.blob.name == sha(data) == got.sha256  # stored in lower case, as the Hub names blobs


# --- the bytes are checked against the Hub's SHA-256 -----------------------------------------------------------


def test_content_other_than_announced_is_refused_and_nothing_kept(hub: FakeHub, cache: Path) -> None:
    data, other = weights(), weights(seed=1)
    assert len(data) == len(other)  # huggingface_hub, which checks only the size, keeps `other` as sha(data)
    hub.put(REPO, FILE, data, body=other)
    with pytest.raises(errors.ChecksumError) as err:
        fetch()
    assert (err.value.expected, err.value.actual) == (sha(data), sha(other))
    assert os.listdir(cache / FOLDER / "blobs") == []  # no blob, no partial, no stamp
    assert not (cache / FOLDER / "snapshots").exists() and not (cache / FOLDER / "refs").exists()
    hub.put(REPO, FILE, data)
    assert fetch().blob.read_bytes() == data


def test_a_pinned_digest_is_checked_before_downloading(hub: FakeHub, cache: Path) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    with pytest.raises(errors.ChecksumError, match="pinned digest"):
        fetch(sha256="0" * 64)
    assert gets(hub) == [] and files_under(cache) == []
    assert fetch(sha256=sha(data)[:12].upper()).sha256 == sha(data)


def test_a_blob_that_does_not_match_its_name_is_replaced(hub: FakeHub) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    blob = fetch().blob
    blob.write_bytes(weights(seed=1))  # what huggingface_hub keeps from a bad transfer of the right size
    assert fetch().blob.read_bytes() == data and len(gets(hub)) == 2


def test_a_snapshot_linking_outside_the_cache_is_refused(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    got = fetch()
    planted = tmp_path / "planted"
    planted.write_bytes(data)  # even with the right bytes: a cache entry must be in the cache
    got.path.unlink()
    got.path.symlink_to(planted)
    with monkeypatch.context() as offline:
        offline.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(errors.OutsideCacheError, match="outside the Hugging Face cache"):
            fetch()
    assert fetch().path.resolve() == got.blob  # online, the link is made again, into the cache


# --- one deadline for the whole call, vggnet's --------------------------------------------------------------------


def test_trickling_headers_are_stopped_at_vggnets_download_deadline(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.put(REPO, FILE, weights(), trickle_headers=0.05)  # ~300 header bytes: 15 s
    monkeypatch.setenv("VGGNET_DOWNLOAD_DEADLINE", "1")
    start = time.monotonic()
    with pytest.raises(errors.DownloadError, match=r"did not answer within 1 s.*VGGNET_DOWNLOAD_DEADLINE"):
        fetch(retries=3)
    assert time.monotonic() - start < 2.0
    assert files_under(cache) == []


@pytest.mark.slow  # 1.5 s of trickle; the HEAD's deadline is the quick one
def test_a_trickling_body_is_stopped_at_the_deadline_the_head_started(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.put(REPO, FILE, b"x" * 100, trickle=0.5)
    monkeypatch.setenv("VGGNET_DOWNLOAD_DEADLINE", "1.5")
    start = time.monotonic()
    with pytest.raises(errors.DownloadError, match=r"did not finish within 1\.5 s"):
        fetch(retries=3)
    assert time.monotonic() - start < 2.5
    assert not (cache / FOLDER / "blobs" / sha(b"x" * 100)).exists()


# --- offline, revisions, a Hub that does not answer ------------------------------------------------------------


def test_offline_uses_the_verified_cache_and_nothing_else(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    data = weights()
    hub.put(REPO, FILE, data)
    monkeypatch.setenv("VGGNET_OFFLINE", "1")
    with pytest.raises(errors.NotCachedError, match="offline"):
        fetch()
    monkeypatch.delenv("VGGNET_OFFLINE")
    got = fetch()
    hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch() == got and hub.requests == []
    got.blob.write_bytes(weights(seed=1))  # changed in place: its name no longer says what it holds
    with pytest.raises(errors.ChecksumError, match="name of its blob"):
        fetch()
    assert hub.requests == []


def test_an_unreachable_hub_falls_back_to_the_cached_revision(
    hub: FakeHub, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.put(REPO, FILE, weights())
    got = fetch()
    hub.put(REPO, FILE, weights(), status=503)
    with caplog.at_level(logging.WARNING):
        assert fetch() == got
    assert "HTTP 503" in caplog.text and "using the cached copy" in caplog.text
    hub.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert fetch() == got
    assert "cannot reach the Hub" in caplog.text
    with pytest.raises(errors.DownloadError, match="cannot reach the Hub"):
        fetch(cache_dir=cache.parent / "empty-cache")


def test_revisions(hub: FakeHub, cache: Path, hf_hub: Any) -> None:
    old, new = weights(seed=1), weights(seed=2)
    hub.put(REPO, FILE, old, commit=COMMIT_A, ref="v1.0")
    hub.put(REPO, FILE, new, commit=COMMIT_B, ref="main")
    assert fetch(revision=COMMIT_A).blob.read_bytes() == old
    assert not (cache / FOLDER / "refs").exists()  # a commit needs no ref
    assert fetch().blob.read_bytes() == new
    assert fetch(revision="v1.0").commit == COMMIT_A
    assert (cache / FOLDER / "refs" / "main").read_text() == COMMIT_B
    assert (cache / FOLDER / "refs" / "v1.0").read_text() == COMMIT_A
    hub.requests.clear()
    assert fetch(revision=COMMIT_A).blob.read_bytes() == old and hub.requests == []  # no request
    assert hf_hub.try_to_load_from_cache(REPO, FILE, cache_dir=cache, revision="v1.0") == str(
        cache / FOLDER / "snapshots" / COMMIT_A / FILE
    )


# --- loading: safetensors only, from the verified open file, one line for anything else --------------------------


def test_a_pickle_served_as_weights_is_refused_in_one_line(hub: FakeHub, tmp_path: Path) -> None:
    """torch's seven-line weights_only message came through the hf-hub: path (issue 24): no pickle is loaded here."""
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.ones(2), "x": _Payload(tmp_path / "pwned")}, evil)
    hub.put(REPO, FILE, evil.read_bytes())
    for call in (lambda: hub_state_dict(f"hf-hub:{REPO}"), lambda: hfhub.load_hf_hub(f"hf-hub:{REPO}")):
        with pytest.raises(errors.BadCheckpointError, match="not safetensors") as err:
            call()
        assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
        assert errors.exit_code(err.value) == 1
    assert not (tmp_path / "pwned").exists()
    hub.put(REPO, FILE, weights())
    assert hfhub.load_hf_hub(f"hf-hub:{REPO}").keys() == {"features.0.weight", "features.0.bias"}


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_the_file_loaded_is_the_one_checked(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob replaced between the fetch and the read is not loaded under the Hub's digest."""
    data = weights()
    hub.put(REPO, FILE, data)
    real = hfhub.hf_hub_fetch

    def then_swapped(*args: Any, **kwargs: Any) -> HubFetched:
        got = real(*args, **kwargs)
        tmp = got.blob.with_name("planted")
        tmp.write_bytes(weights(seed=1))
        os.replace(tmp, got.blob)
        return got

    monkeypatch.setattr(hfhub, "hf_hub_fetch", then_swapped)
    with pytest.raises(errors.ChecksumError, match="changed after it was verified"):
        hfhub.load_hf_hub(f"hf-hub:{REPO}")


def test_hf_hub_name_of_another_arch_is_refused_before_any_request(hub: FakeHub) -> None:
    from vggnet.models.checkpoint import load

    with pytest.raises(errors.ArchMismatch, match="vgg16 weights, not vgg19"):
        load("hf-hub:timm/vgg16.tv_in1k", arch="vgg19")
    assert not hub.requests


@pytest.mark.slow  # a full-size vgg11 published, downloaded, hashed and built twice
def test_builders_and_the_loader_take_hf_hub_names(hub: FakeHub, tmp_path: Path) -> None:
    from vggnet.models.checkpoint import load

    torch.manual_seed(0)
    model = vggnet.vgg11().eval()
    layouts.write_state_dict(model.state_dict(), tmp_path / "timm.safetensors", layout="timm")
    hub.put("timm/vgg11.tv_in1k", FILE, (tmp_path / "timm.safetensors").read_bytes())
    loaded = load("hf-hub:timm/vgg11.tv_in1k")
    built = vggnet.vgg11(weights="hf-hub:timm/vgg11.tv_in1k").state_dict()
    assert (loaded.arch, loaded.weights, len(loaded.categories or ()), loaded.preset.crop_size) == (
        "vgg11", "hf-hub:timm/vgg11.tv_in1k", 1000, 224)  # fmt: skip
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in built.items())
    assert all(torch.equal(built[k], v) for k, v in model.state_dict().items())
    assert len(gets(hub)) == 1


def test_the_loader_never_loads_a_planted_file_or_a_body_the_hubs_digest_does_not_name(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    """Through huggingface_hub, both loaded with a mere warning: the planted target of an ETag of "../../..", and
    a same-size wrong body under an upper-case SHA-256 (issue 24)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pwned").write_bytes(weights(seed=666))
    hub.put(REPO, FILE, weights(), headers={"X-Linked-Etag": '"../../../outside/pwned"'})
    with pytest.raises(errors.HubResponseError, match="is not a SHA-256"):
        hub_state_dict(f"hf-hub:{REPO}")
    data, other = weights(seed=1), weights(seed=2)
    hub.put(REPO, FILE, data, body=other, headers={"X-Linked-Etag": f'"{sha(data).upper()}"'})
    with pytest.raises(errors.ChecksumError, match=sha(data)):
        hub_state_dict(f"hf-hub:{REPO}")
    assert files_under(outside) == ["pwned"] and not (cache / FOLDER / "snapshots").exists()
