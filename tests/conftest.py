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
  parameters, about 528 MiB) saved once per run (pytest-xdist's workers share it) in both torch
  serialization formats:
  `.zip` (torch.save's default) and `.legacy` (`_use_new_zipfile_serialization=False`, the format
  of six of the eight official files). Each is a `CheckpointFile` with path, name
  (torch.hub-style `vgg16-<sha256[:8]>.pth`), sha256 and size; `.fingerprint` is `fingerprint()`
  of the tensors, to compare anything loaded against what was saved. Read-only: copy, don't edit.
- `small_checkpoints` (session): the same for a tiny state dict, where the size does not matter.
- `module_folders` (module): `module_folders.mktemp(name)` makes folders for a module's shared files, all
  removed when the module ends (tmp_path_factory's stay until the session ends: keep the disk's peak low).
- `_isolated_cache` (autouse): every test gets its own empty TORCH_HOME (so torch.hub's cache and
  vggnet's default cache are private to it), no VGGNET_HOME / VGGNET_MIRROR / VGGNET_OFFLINE, and
  NO_PROXY for loopback, so no test ever reads or writes the user's real cache or goes through a proxy.
- `_compiled_code_released` (autouse): after a test that compiled a graph, torch.compile's caches are
  reset, so a worker does not keep every compiled model's weights (it ran out of memory).
- `_module_garbage_collected` (autouse, per module): at each module's end, the models `small_model` and
  `head_model` keep are dropped, a full collection runs, then the survivors are frozen (`gc.freeze`), so
  the collections after each test scan only what tests made since.
- Under pytest-xdist (`-n N`), each worker and the processes its tests start use cores // N threads.
- Each test process and the processes its tests start compile into a private Inductor cache
  (TORCHINDUCTOR_CACHE_DIR), removed when the process ends.
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

import ctypes
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock

import vggnet
import vggnet.hub._download
from tests.helpers import Checkpoints, ModuleFolders, forget_models, make_state_dict, save_both_formats, write_photos
from tests.server import FaultServer
from vggnet.models.vgg import VGG

_INDUCTOR_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Each test process computes on its share of the cores and compiles into an Inductor cache of its own.

    Under pytest-xdist, two workers of torch's default thread count on two cores oversubscribe them (OpenMP's
    threads wait for each other); one thread each ran the slow export and convert tests 11% faster.
    Inductor's cache (kernels, precompiled headers of 150 MB each, compiled models with their weights) went
    into the machine's /tmp/torchinductor_<user> and stayed (3.8 GB after four runs); now it is a folder of
    this process's (its subprocesses inherit it), removed at its end.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the processes tests spawn
    config.stash[_INDUCTOR_CACHE] = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The process's Inductor cache goes with it."""
    if _INDUCTOR_CACHE in config.stash:
        shutil.rmtree(config.stash[_INDUCTOR_CACHE], ignore_errors=True)


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


@pytest.fixture(scope="session")
def vgg16_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkpoints]:
    """Full-size seeded vgg16 weights (~528 MiB) in both formats, generated once per run.

    Under pytest-xdist the workers share one copy (1 GB on disk, not 1 GB per worker): the first to ask
    writes it into the run's folder, under a file lock, and pytest removes that folder after a run that
    passed.
    """

    def write(folder: Path) -> Checkpoints:
        return save_both_formats(make_state_dict("vgg16", seed=16), folder, "vgg16")

    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp("vgg16-checkpoints")
        yield write(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return
    folder = tmp_path_factory.getbasetemp().parent / "vgg16-checkpoints"  # the run's, above each worker's
    with FileLock(f"{folder}.lock"):
        made = folder / "checkpoints.json"
        if not made.exists():
            folder.mkdir()
            made.write_text(write(folder).to_json())
        checkpoints = Checkpoints.from_json(made.read_text())
    yield checkpoints


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


_LIBC = ctypes.CDLL("libc.so.6") if sys.platform == "linux" else None


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _graphs_compiled() -> int:
    if "torch._dynamo" not in sys.modules:  # nothing compiled yet: importing the compiler costs seconds
        return 0
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _release_memory() -> None:
    """Collect the garbage the collector tracks now, then hand glibc's freed pages back to the system."""
    gc.collect()
    _LIBC and _LIBC.malloc_trim(0)


@pytest.fixture(scope="module", autouse=True)
def _module_garbage_collected() -> Iterator[None]:
    """Once per test module, after its fixtures are gone: every object collected, then the survivors frozen.

    Frozen objects (torch's, the peers' and pytest's own: about half a million once timm, onnx and torchao
    are imported) are left out of every later collection, so the per-test collection below scans only what
    tests made since. A full collection took 0.3-1 s, after each of the slow matrix's 570 tests: teardowns
    took 800 of its 4,370 s. Garbage made of frozen objects waits for the next module's end.
    """
    yield
    forget_models()
    gc.unfreeze()
    _release_memory()
    gc.freeze()


@pytest.fixture(autouse=True)
def _compiled_code_released() -> Iterator[None]:
    """After a test that compiled, drop torch.compile's caches (each compiled model's graphs and frozen
    weights); after a test that left the process big, hand freed memory back to the system. Without
    them a worker of the slow matrix grew past 17 GB and was killed for memory."""
    before = _graphs_compiled()
    yield
    if _graphs_compiled() != before:
        torch._dynamo.reset()
    if _resident_bytes() > 2 << 30:  # a big test's memory goes back to the system, not kept for the next
        _release_memory()


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


@pytest.fixture(scope="module")
def vgg11() -> VGG:
    """A seeded vgg11 with 10 classes in eval mode, built once per test module: use it, don't change it."""
    torch.manual_seed(11)
    return vggnet.vgg11(num_classes=10).eval()


@pytest.fixture(scope="module")
def module_folders(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ModuleFolders]:
    """Folders for one module's shared files (`module_folders.mktemp(name)`), all removed when the module ends.

    Module fixtures write full-size checkpoints (about 0.5 GB each): under tmp_path_factory they stayed until
    the session's end, 3.7 GB at the quick run's peak, and a CI machine's disk filled up.
    """
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield ModuleFolders(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(module_folders: ModuleFolders) -> Path:
    return write_photos(module_folders.mktemp("photos"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """VGGNET_HOME for one test."""
    home = tmp_path / "cache"
    monkeypatch.setenv("VGGNET_HOME", str(home))
    return home


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vggnet.hub._download, "BACKOFF", 0.01)
