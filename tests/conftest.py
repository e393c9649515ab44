"""Shared fixtures: a fault-injecting HTTP server on loopback, and generated full-size checkpoints.

Fixtures (import the helper classes with `from .conftest import Fault, fingerprint`):

- `http_server`: a `FaultServer` on 127.0.0.1 in a background thread, emptied before each test.
  Register a file and what goes wrong with it, then point a record or URL at it::

      url = http_server.add("/vgg16-1234abcd.pth", ckpt.zip.path, Fault.drop(after=1 << 20))
      ...
      assert http_server.count("/vgg16-1234abcd.pth") == 2
      assert http_server.log("/vgg16-1234abcd.pth")[1].range == "bytes=1048576-"
      assert http_server.bytes_served("/vgg16-1234abcd.pth") < 2 * ckpt.zip.size

  Each request to a path takes the next fault from its queue; once the queue is empty the file is
  served normally (Range supported, 206/416 as a real server would). `rate=` slows every transfer
  of that path down to so many bytes per second.
- `vgg16_checkpoints` (session): a real, seeded, full-size vgg16 state dict (138,357,544 float32
  parameters, about 528 MiB) saved once per session in both torch serialization formats:
  `.zip` (torch.save's default) and `.legacy` (`_use_new_zipfile_serialization=False`, the format
  of six of the eight official files). Each is a `CheckpointFile` with path, name
  (torch.hub-style `vgg16-<sha256[:8]>.pth`), sha256 and size; `.fingerprint` is `fingerprint()`
  of the tensors, to compare anything loaded against what was saved. Read-only: copy, don't edit.
- `small_checkpoints` (session): the same for a tiny state dict, where the size does not matter.
- `_isolated_cache` (autouse): every test gets its own empty TORCH_HOME (so torch.hub's cache and
  vggnet's default cache are private to it), no VGGNET_HOME / VGGNET_MIRROR / VGGNET_OFFLINE, and
  NO_PROXY for loopback, so no test ever reads or writes the user's real cache or goes through a proxy.
- `arch_matrix(archs)`: parametrize full-size checks over `archs`, all but FAST_ARCHS marked `slow`.
- `cache`: VGGNET_HOME pointed at a fresh folder for one test; `fast_retries`: download backoff of 10 ms.
  Helpers for the cache, download and hub tests: `record`, `leftovers`, `no_hashing`, `spawn_python`,
  `plant_victim`, `closed_port`.
- Models and photos: `randomize_batchnorm`, `save_seeded_vgg11`, `vgg11` (module), `PHOTOS` (the real photos).
- Image folders for the batch, predict, embed, evaluate and image tests: `write_images`, `write_corrupt`,
  `write_labelled`, `write_photos` and the `photos` fixture (module: 16 images, 2 unreadable files),
  `small_model` with `CLASSES` and `PRESET`, and the checks `by_hand`, `check_results`, `readable`, `bad_paths`.
- `write_set(root, {"train": 8, "val": 4})`: a labelled image folder of two classes told apart by colour
  (COLOURS), for the ImageFolder and fine-tuning tests.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import vggnet
import vggnet.hub._download
from vggnet.data.decode import load_image
from vggnet.data.transforms import ImageClassification
from vggnet.models.config import arch_config
from vggnet.models.vgg import VGG, make_layers
from vggnet.models.weights import Weights

Body = bytes | Path

# The default run builds real full-size weights for one small and one BatchNorm model; the other six
# run in the `slow` matrix (CI runs both). Checks that need no real weights (meta device) cover all eight.
FAST_ARCHS = ("vgg11", "vgg11_bn")


def arch_matrix(archs: list[str]) -> list[pytest.param]:
    """`archs` as pytest parameters, the ones outside FAST_ARCHS marked `slow`."""
    return [pytest.param(a, marks=() if a in FAST_ARCHS else pytest.mark.slow) for a in archs]


# --- the server ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """What the server does to one request; build one with the class methods."""

    kind: str
    status: int = 200
    after: int = 0
    seconds: float = 0.0
    data: bytes = b""
    location: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def http(cls, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> Fault:
        """Answer with this status (and headers, e.g. Retry-After) instead of the file."""
        return cls("http", status=status, headers=dict(headers or {}), data=body)

    @classmethod
    def drop(cls, after: int) -> Fault:
        """Announce the whole file, send `after` bytes of it, then close the connection."""
        return cls("drop", after=after)

    @classmethod
    def stall(cls, after: int, seconds: float) -> Fault:
        """Send `after` bytes, go silent for `seconds`, then close the connection."""
        return cls("stall", after=after, seconds=seconds)

    @classmethod
    def ignore_range(cls) -> Fault:
        """Answer 200 with the whole file even when the request asked for a Range."""
        return cls("ignore_range")

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Fault:
        """Redirect to `location` (a path on this server or a URL)."""
        return cls("redirect", status=status, location=location)

    @classmethod
    def extra(cls, data: bytes, announce: bool = True) -> Fault:
        """Send the file followed by `data`; Content-Length counts only the file, or is absent."""
        return cls("extra", data=data, after=int(announce))

    @classmethod
    def length(cls, content_length: int) -> Fault:
        """Serve the file normally but announce this Content-Length (then close)."""
        return cls("length", after=content_length)

    @classmethod
    def body(cls, data: bytes) -> Fault:
        """Serve these bytes instead of the file (a wrong file, an HTML error page)."""
        return cls("body", data=data)


@dataclass
class Request:
    """One request as the server saw it; logged when it arrives and updated as the answer goes out,
    so a client that has read the last byte already sees its request counted."""

    path: str
    method: str
    range: str | None
    status: int = 0
    bytes_sent: int = 0


@dataclass
class _Route:
    body: Body
    faults: list[Fault]
    rate: float | None


class FaultServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that serves registered files and injects faults."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._log: list[Request] = []
        self._mutex = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: Body, *faults: Fault, rate: float | None = None) -> str:
        """Serve `body` (bytes or a file) at `path`; each request takes the next fault. Returns the URL."""
        with self._mutex:
            self._routes[path] = _Route(body, list(faults), rate)
        return self.url(path)

    def set_rate(self, path: str, rate: float | None) -> None:
        with self._mutex:
            self._routes[path].rate = rate

    def log(self, path: str | None = None) -> list[Request]:
        """The finished requests, in order of completion (optionally only those for `path`)."""
        with self._mutex:
            return [r for r in self._log if path is None or r.path == path]

    def count(self, path: str) -> int:
        return len(self.log(path))

    def bytes_served(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.log(path))

    def reset(self) -> None:
        with self._mutex:
            self._routes.clear()
            self._log.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, path: str) -> tuple[_Route | None, Fault | None]:
        with self._mutex:
            route = self._routes.get(path)
            fault = route.faults.pop(0) if route is not None and route.faults else None
            return route, fault

    def _record(self, request: Request) -> None:
        with self._mutex:
            self._log.append(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FaultServer
    entry: Request
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        route, fault = self.owner._route(path)
        self.entry = Request(path, self.command, self.headers.get("Range"))
        self.owner._record(self.entry)
        try:
            self._respond(route, fault, self.entry.range, head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        if hasattr(self, "entry"):  # not for a request too malformed to reach _serve
            self.entry.status = code
        super().send_response(code, message)

    def _respond(self, route: _Route | None, fault: Fault | None, asked: str | None, head: bool) -> None:
        if route is None:
            return self._plain(404, b"not found")
        if fault is not None and fault.kind == "http":
            return self._plain(fault.status, fault.data, fault.headers)
        if fault is not None and fault.kind == "redirect":
            return self._plain(fault.status, b"", {"Location": fault.location})
        data = fault.data if fault is not None and fault.kind == "body" else route.body
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        start, end = 0, size
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", asked or "")
        if match and not (fault is not None and fault.kind == "ignore_range"):
            start = int(match.group(1))
            if start >= size:
                return self._plain(416, b"", {"Content-Range": f"bytes */{size}"})
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        length: int | None = end - start
        extra = b""
        if fault is not None and fault.kind == "extra":
            extra = fault.data
            length = length if fault.after else None
        if fault is not None and fault.kind == "length":
            length = fault.after
        if length is not None:
            self.send_header("Content-Length", str(length))
        if fault is not None or length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return None
        stop = end
        if fault is not None and fault.kind in ("drop", "stall"):
            stop = min(end, start + fault.after)
        self._send(data, start, stop, route.rate)
        if extra:
            self._write(extra)
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.seconds)
        if fault is not None and fault.kind in ("drop", "stall"):
            self.connection.shutdown(socket.SHUT_RDWR)
        return None

    def _plain(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _write(self, piece: bytes | memoryview) -> None:
        self.entry.bytes_sent += len(piece)  # counted before the client can see it
        try:
            self.wfile.write(piece)
        except OSError:
            self.entry.bytes_sent -= len(piece)
            raise

    def _send(self, data: Body, start: int, stop: int, rate: float | None) -> None:
        chunk = 1 << 20 if rate is None else max(1, min(1 << 20, int(rate / 20)))
        began = time.monotonic()
        with _opened(data) as read:
            pos = start
            while pos < stop:
                piece = read(pos, min(chunk, stop - pos))
                self._write(piece)
                pos += len(piece)
                if rate is not None:
                    ahead = (pos - start) / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)


class _opened:
    """A `read(offset, n)` over bytes or a file."""

    def __init__(self, data: Body) -> None:
        self.data = data
        self.file = None if isinstance(data, bytes) else open(data, "rb")  # noqa: SIM115

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.file is None:
            view = memoryview(self.data)  # type: ignore[arg-type]
            return lambda pos, n: view[pos : pos + n]

        def read(pos: int, n: int) -> bytes:
            self.file.seek(pos)  # type: ignore[union-attr]
            return self.file.read(n)  # type: ignore[union-attr]

        return read

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


@pytest.fixture(scope="session")
def _fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture
def http_server(_fault_server: FaultServer) -> FaultServer:
    """The loopback fault-injecting server, with no routes and an empty log."""
    _fault_server.reset()
    return _fault_server


# --- checkpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Checkpoints:
    """One state dict saved in both serialization formats."""

    zip: CheckpointFile
    legacy: CheckpointFile
    fingerprint: str
    keys: tuple[str, ...]


def make_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded state dict with the keys, shapes and dtypes of `arch`'s checkpoints (real tensors)."""
    row, batch_norm = arch_config(arch)
    with torch.device("meta"):
        layout = VGG(make_layers(row, batch_norm), init_weights=False).state_dict()
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, meta in layout.items():
        if meta.is_floating_point():
            state[key] = torch.randn(meta.shape, generator=g).mul_(0.01)
        else:
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype)
    return state


def fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every key, dtype, shape and byte of a state dict, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


COLOURS = {"blue": (30, 60, 200), "red": (200, 40, 30)}  # sorted names: blue is class 0


def write_set(root: Path, per_class: dict[str, int], size: int = 64, seed: int = 0) -> None:
    """Noisy flat colours, one folder per class: separable by colour, never two identical images."""
    import numpy as np
    from PIL import Image  # the tests that call this skip without Pillow

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size + 8, 3)), 0, 255).astype(np.uint8)
                suffix = ".png" if i % 3 else ".jpg"  # both formats are read
                Image.fromarray(pixels).save(root / split / name / f"{i}{suffix}")


def save_both_formats(state: Mapping[str, torch.Tensor], folder: Path, stem: str) -> Checkpoints:
    """Save `state` as `<stem>-<hex>.pth` (zip) and `<stem>-legacy-<hex>.pth`, torch.hub-style names."""
    files = []
    for suffix, zip_format in (("", True), ("-legacy", False)):
        tmp = folder / f"{stem}{suffix}.tmp"
        torch.save(dict(state), tmp, _use_new_zipfile_serialization=zip_format)
        digest = file_sha256(tmp)
        path = tmp.rename(folder / f"{stem}{suffix}-{digest[:8]}.pth")
        path.chmod(0o444)
        files.append(CheckpointFile(path, digest, path.stat().st_size))
    return Checkpoints(files[0], files[1], fingerprint(state), tuple(state))


@pytest.fixture(scope="session")
def vgg16_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkpoints]:
    """Full-size seeded vgg16 weights (~528 MiB) in both formats, generated once per session."""
    folder = tmp_path_factory.mktemp("vgg16-checkpoints")
    checkpoints = save_both_formats(make_state_dict("vgg16", seed=16), folder, "vgg16")
    yield checkpoints
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def small_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    """A small seeded state dict (a few hundred KiB) in both formats, for tests where size does not matter."""
    g = torch.Generator().manual_seed(1)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3, generator=g),
        "features.0.bias": torch.randn(64, generator=g),
    }
    state["classifier.6.weight"] = torch.randn(100, 512, generator=g)
    return save_both_formats(state, tmp_path_factory.mktemp("small-checkpoints"), "small")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, empty TORCH_HOME for every test, and no vggnet environment variables."""
    home = tmp_path_factory.mktemp("torch-home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    for name in ("VGGNET_HOME", "VGGNET_MIRROR", "VGGNET_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    yield home
    shutil.rmtree(home, ignore_errors=True)  # downloaded checkpoints are large: don't keep them


# --- models and photos shared by many modules -------------------------------------------------------

PHOTOS = Path(__file__).parent / "photos"  # four real photos (their sources are in photos/SOURCES.md)


def randomize_batchnorm(
    model: torch.nn.Module, mean: float = 0.1, var: tuple[float, float] = (0.5, 1.5), affine: bool = False
) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics (running mean in +-`mean`, running variance in `var`; with `affine`,
    weight and bias too), drawn from torch's global generator module by module, so that BatchNorm matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-mean, mean)
                m.running_var.uniform_(*var)
                if affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    return model


def save_seeded_vgg11(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """The full-size state dict `vggnet.vgg11()` builds after `torch.manual_seed(seed)`, saved at `path`."""
    torch.manual_seed(seed)
    state = vggnet.vgg11().state_dict()
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def vgg11() -> VGG:
    """A seeded vgg11 with 10 classes in eval mode, built once per test module: use it, don't change it."""
    torch.manual_seed(11)
    return vggnet.vgg11(num_classes=10).eval()


# --- image folders for the batch, predict, embed, evaluate and image-listing tests -------------------


def write_images(folder: Path, names: list[str], seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Path]:
    """Random-noise images (JPEG or PNG by their suffix) at `folder/name`; returns their paths."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_corrupt(path: Path, kind: str = "garbage") -> Path:
    """An image file that cannot be decoded: bytes that are no image, or a JPEG cut short in its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not an image")
    else:
        Image = pytest.importorskip("PIL.Image")
        buf = io.BytesIO()
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buf, format="JPEG")
        path.write_bytes(buf.getvalue()[:40])
    return path


def write_labelled(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """root/<class>/<i>.jpg|png noise images, and one unreadable file in the first class."""
    names = [f"{c}/{i}.{'png' if i % 2 else 'jpg'}" for c in classes for i in range(per_class)]
    write_images(root, names, seed=1)
    write_corrupt(root / classes[0] / "zz-broken.png")
    return root


CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]


@functools.cache
def small_model(num_classes: int = len(CLASSES), seed: int = 0) -> vggnet.VGG:
    """A seeded vgg11 whose fc8 is scaled up 300x, so that images get clearly different, confident answers.

    Built once per test process (130 M parameters take a while); the tests only read it.
    """
    torch.manual_seed(seed)
    model = vggnet.vgg11(num_classes=num_classes)
    with torch.no_grad():
        model.classifier[6].weight.mul_(300)
    return model.eval()


PRESET = ImageClassification(crop_size=32, resize_size=36)


def write_photos(root: Path) -> Path:
    """16 JPEG/PNG images in nested folders, and two files that cannot be read."""
    names = [f"{d}/{i}.{'png' if i % 3 else 'jpg'}" for d in ("x", "y/z") for i in range(8)]
    write_images(root, names)
    write_corrupt(root / "x" / "broken.jpg")
    write_corrupt(root / "y" / "cut.jpg", "truncated")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def by_hand(model, paths, k=3):
    """Top-k (index, probability) per readable image, from the plain eager model."""
    with torch.inference_mode():
        probs = model(torch.stack([PRESET(load_image(p)) for p in paths])).softmax(1)
    top = probs.topk(k, dim=1)
    return {str(p): list(zip(i, v)) for p, i, v in zip(paths, top.indices.tolist(), top.values.tolist())}


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_results(records, expected, bad):
    """One record per image, the readable ones as computed by hand, the unreadable ones with an error."""
    assert sorted(r["image"] for r in records) == sorted([*expected, *bad])
    for r in records:
        if r["image"] in bad:
            assert set(r) == {"image", "error"} and r["error"]
            continue
        want = expected[r["image"]]
        assert [p["index"] for p in r["predictions"]] == [i for i, _ in want]
        assert [p["probability"] for p in r["predictions"]] == pytest.approx([v for _, v in want], abs=1e-4)
        assert [p["label"] for p in r["predictions"]] == [CLASSES[i] for i, _ in want]


BAD = ("broken.jpg", "cut.jpg")  # the two files write_photos makes unreadable


def readable(photos):
    return sorted(p for p in photos.rglob("*") if p.is_file() and p.name not in BAD)


def bad_paths(photos):
    return {str(photos / "x" / "broken.jpg"), str(photos / "y" / "cut.jpg")}


def torchrun(*args, nproc=2, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


# --- the cache, download and hub tests -------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """VGGNET_HOME for one test."""
    home = tmp_path / "cache"
    monkeypatch.setenv("VGGNET_HOME", str(home))
    return home


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vggnet.hub._download, "BACKOFF", 0.01)


def record(url: str, ckpt_file: CheckpointFile, **kwargs: object) -> Weights:
    return Weights(url=url, sha256=ckpt_file.sha256, **kwargs)  # type: ignore[arg-type]


def leftovers(folder: Path) -> list[str]:
    """Everything in `folder` but lock files (which filelock may leave behind by design)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def no_hashing(path: Path) -> str:
    raise AssertionError(f"{path} was hashed again although its stamp matches")


def spawn_python(code: str, *args: object) -> subprocess.Popen[str]:
    """`python -c code args...` in the checkout, with this test's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def plant_victim(tmp_path: Path) -> tuple[Path, bytes]:
    """A file of the user's own outside the cache (0600), and its bytes: what a planted link points at."""
    victim = tmp_path / "victim.txt"
    content = b"precious data, not a checkpoint\n" * 100
    victim.write_bytes(content)
    victim.chmod(0o600)
    return victim, content


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])
