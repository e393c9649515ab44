"""hf-hub: weights through huggingface_hub, against a loopback server standing in for the Hub (HF_ENDPOINT).

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported: one test runs a fresh
process with those variables set, as a user's would; the others set them and import huggingface_hub's
`constants` afresh in this process (`hf_env`), which is all its import does with them.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import vggnet
from vggnet.hub import _formats as formats
from vggnet.hub import _huggingface as hfhub
from vggnet.hub._huggingface import HubName, parse_hf_hub
from vggnet.models import layouts
from vggnet.models.checkpoint import hub_state_dict
from vggnet.models.sources import hub_arch_of

pytest.importorskip("safetensors")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    """Serves `/{owner}/{repo}/resolve/{revision}/{file}` as the Hub does for LFS files."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.announce: dict[str, str] = {}  # path -> SHA-256 to announce instead of the real one
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                server.requests.append((self.command, self.path, self.headers.get("Authorization")))
                owner, repo, resolve, _revision, *name = self.path.lstrip("/").split("/")
                key = f"{owner}/{repo}/{'/'.join(name)}"
                data = server.files.get(key) if resolve == "resolve" else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                sha = server.announce.get(key, hashlib.sha256(data).hexdigest())
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"')  # the git pointer's sha1
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # polled every 50 ms, not 0.5 s: close() waits for the next poll
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub() -> Iterator[HubServer]:
    server = HubServer()
    yield server
    server.close()


@pytest.fixture
def hf_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`hf_env(HF_ENDPOINT=..., ...)`: set the variables and re-read them as importing huggingface_hub does."""
    constants = pytest.importorskip("huggingface_hub.constants")
    http = importlib.import_module("huggingface_hub.utils._http")

    def apply(**env: str) -> None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        importlib.reload(constants)
        http.close_session()  # no connection kept from another test's server

    yield apply
    monkeypatch.undo()
    importlib.reload(constants)
    http.close_session()


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few small tensors in vggnet's layout, fc6 to fc8 included, so the timm conversion is exercised."""
    g = torch.Generator().manual_seed(seed)
    return {
        "features.0.weight": torch.randn(64, 3, 3, 3, generator=g),
        "features.0.bias": torch.randn(64, generator=g),
        "classifier.0.weight": torch.randn(16, 512 * 7 * 7, generator=g),  # a narrow fc6: (16, 25088)
        "classifier.0.bias": torch.randn(16, generator=g),
        "classifier.3.weight": torch.randn(16, 16, generator=g),
        "classifier.3.bias": torch.randn(16, generator=g),
        "classifier.6.weight": torch.randn(10, 16, generator=g),
        "classifier.6.bias": torch.randn(10, generator=g),
    }


def publish(hub: HubServer, tmp_path: Path, repo: str, state: dict[str, torch.Tensor]) -> bytes:
    """Put `state` on the server as `repo`'s model.safetensors, in timm's layout (as timm publishes)."""
    path = tmp_path / f"{repo.replace('/', '--')}.safetensors"
    layouts.write_state_dict(state, path, layout="timm")
    data = path.read_bytes()
    hub.files[f"{repo}/model.safetensors"] = data
    return data


def load_here(
    hf_env: Callable[..., None], hub: HubServer, cache: Path, name: str, *, sha256: str | None = None, **env: str
) -> dict:
    """`load_hf_hub(name)` in this process with the Hub variables set; the outcome as `load_in_process` reports it."""
    hf_env(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache), **env)
    try:
        arch, state = hub_state_dict(name, sha256=sha256)
    except Exception as err:
        return {"error": type(err).__name__, "message": str(err)}
    path = hfhub.hf_hub_file(name)
    return {"arch": arch, "path": str(path), "blob": str(path.resolve()), "state": state}


def load_in_process(hub: HubServer, cache: Path, name: str, *, sha256: str | None = None, **env: str) -> dict:
    """Run `load_hf_hub(name)` in a fresh process; save the state dict and report the outcome as JSON."""
    out = cache.parent / "state.safetensors"
    code = f"""
import json, sys
from vggnet.hub import _formats as formats, _huggingface as hfhub
from vggnet.models.checkpoint import hub_state_dict
try:
    arch, state = hub_state_dict({name!r}, sha256={sha256!r})
except Exception as err:
    print(json.dumps({{"error": type(err).__name__, "message": str(err)}}))
    sys.exit(0)
formats.save_safetensors(state, {str(out)!r})
path = hfhub.hf_hub_file({name!r})
print(json.dumps({{"arch": arch, "path": str(path), "blob": str(path.resolve())}}))
"""
    environ = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
    environ.pop("HF_TOKEN", None)
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" not in result:
        result["state"] = formats.load_safetensors(out)
    return result


def test_parse_names() -> None:
    assert parse_hf_hub("hf-hub:timm/vgg16.tv_in1k") == HubName("timm/vgg16.tv_in1k", None)
    assert parse_hf_hub("hf-hub:timm/vgg19_bn.tv_in1k@abc") == HubName("timm/vgg19_bn.tv_in1k", "abc")
    with pytest.raises(ValueError, match="hf-hub:owner/repository"):
        parse_hf_hub("timm/vgg16.tv_in1k")
    with pytest.raises(ValueError, match="'owner/name'"):
        parse_hf_hub("hf-hub:vgg16")
    with pytest.raises(ValueError, match=r"vgg11, vgg11_bn.*vgg19_bn"):
        hub_arch_of("hf-hub:timm/resnet50.a1_in1k")
    assert hub_arch_of("hf-hub:timm/vgg19_bn.tv_in1k@abc") == "vgg19_bn"


def test_download_converts_caches_and_works_offline(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    state = small_state()
    publish(hub, tmp_path, "timm/vgg16.tv_in1k", state)
    cache = tmp_path / "hf-cache"
    result = load_here(hf_env, hub, cache, "hf-hub:timm/vgg16.tv_in1k")
    assert result["arch"] == "vgg16"
    assert result["state"].keys() == state.keys()
    assert all(torch.equal(result["state"][k], v) for k, v in state.items())  # timm layout undone, bit-exact
    blob = Path(result["blob"])
    assert blob.is_relative_to(cache / "models--timm--vgg16.tv_in1k" / "blobs")
    assert blob.name == hashlib.sha256(hub.files["timm/vgg16.tv_in1k/model.safetensors"]).hexdigest()
    assert sum(method == "GET" for method, _, _ in hub.requests) == 1
    hub.requests.clear()
    offline = load_in_process(hub, cache, "hf-hub:timm/vgg16.tv_in1k", HF_HUB_OFFLINE="1")  # a user's process
    assert offline["arch"] == "vgg16" and not hub.requests  # from the cache, no request at all
    assert all(torch.equal(offline["state"][k], v) for k, v in state.items())


def test_offline_without_a_cached_copy_fails(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    publish(hub, tmp_path, "timm/vgg11.tv_in1k", small_state())
    result = load_here(hf_env, hub, tmp_path / "cache", "hf-hub:timm/vgg11.tv_in1k", HF_HUB_OFFLINE="1")
    assert result["error"] == "LocalEntryNotFoundError" and not hub.requests


def test_token_is_sent(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    publish(hub, tmp_path, "timm/vgg11.tv_in1k", small_state())
    result = load_here(hf_env, hub, tmp_path / "cache", "hf-hub:timm/vgg11.tv_in1k", HF_TOKEN="hf_secret")
    assert result["arch"] == "vgg11"
    assert {auth for _, _, auth in hub.requests} == {"Bearer hf_secret"}


def test_pinned_digest_is_checked(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    data = publish(hub, tmp_path, "timm/vgg13.tv_in1k", small_state())
    digest = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    ok = load_here(hf_env, hub, cache, "hf-hub:timm/vgg13.tv_in1k", sha256=digest[:12])
    assert ok["arch"] == "vgg13"
    wrong = load_here(hf_env, hub, cache, "hf-hub:timm/vgg13.tv_in1k", sha256="0" * 64)
    assert wrong["error"] == "ChecksumError" and "pinned digest" in wrong["message"]
    assert (cache / "models--timm--vgg13.tv_in1k" / "blobs" / digest).exists()  # the file itself is fine: kept


def test_content_that_is_not_what_the_hub_announced_is_refused_and_removed(
    hub: HubServer, tmp_path: Path, hf_env
) -> None:  # type: ignore[no-untyped-def]
    data = publish(hub, tmp_path, "timm/vgg19.tv_in1k", small_state())
    announced = hashlib.sha256(b"another file of the same size").hexdigest()
    hub.announce["timm/vgg19.tv_in1k/model.safetensors"] = announced  # huggingface_hub checks only the size
    cache = tmp_path / "cache"
    result = load_here(hf_env, hub, cache, "hf-hub:timm/vgg19.tv_in1k")
    assert result["error"] == "ChecksumError"
    assert announced in result["message"] and hashlib.sha256(data).hexdigest() in result["message"]
    assert not (cache / "models--timm--vgg19.tv_in1k" / "blobs" / announced).exists()
    del hub.announce["timm/vgg19.tv_in1k/model.safetensors"]
    assert load_here(hf_env, hub, cache, "hf-hub:timm/vgg19.tv_in1k")["arch"] == "vgg19"  # a fresh download


def test_missing_file_is_an_error_naming_it(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    result = load_here(hf_env, hub, tmp_path / "cache", "hf-hub:timm/vgg16_bn.tv_in1k")
    assert result["error"] == "RemoteEntryNotFoundError" or result["error"].endswith("NotFoundError")


@pytest.mark.slow  # a full-size vgg11 published, downloaded, hashed twice and built twice
def test_builders_and_the_loader_take_hf_hub_names(hub: HubServer, tmp_path: Path, hf_env) -> None:  # type: ignore[no-untyped-def]
    from vggnet.models.checkpoint import load

    torch.manual_seed(0)
    model = vggnet.vgg11().eval()
    publish(hub, tmp_path, "timm/vgg11.tv_in1k", model.state_dict())
    hf_env(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / "cache"))
    loaded = load("hf-hub:timm/vgg11.tv_in1k")
    built = vggnet.vgg11(weights="hf-hub:timm/vgg11.tv_in1k").state_dict()
    report = {
        "arch": loaded.arch, "weights": loaded.weights, "classes": len(loaded.categories or ()),
        "crop": loaded.preset.crop_size,
        "same": all((loaded.model.state_dict()[k] == v).all().item() for k, v in built.items()),
    }  # fmt: skip
    assert report == {
        "arch": "vgg11",
        "weights": "hf-hub:timm/vgg11.tv_in1k",
        "classes": 1000,
        "crop": 224,
        "same": True,
    }
    assert all(torch.equal(built[k], v) for k, v in model.state_dict().items())


def test_hf_hub_name_of_another_arch_is_refused_before_any_request(hub: HubServer) -> None:
    from vggnet.errors import ArchMismatch
    from vggnet.models.checkpoint import load

    with pytest.raises(ArchMismatch, match="vgg16 weights, not vgg19"):
        load("hf-hub:timm/vgg16.tv_in1k", arch="vgg19")
    assert not hub.requests
