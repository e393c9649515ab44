"""What many test modules share: seeded models and checkpoints, image folders, checks on results, processes."""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
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

# The default run builds real full-size weights for one small and one BatchNorm model; the other six
# run in the `slow` matrix (CI runs both). Checks that need no real weights (meta device) cover all eight.
FAST_ARCHS = ("vgg11", "vgg11_bn")


def arch_matrix(archs: list[str]) -> list[pytest.param]:
    """`archs` as pytest parameters, the ones outside FAST_ARCHS marked `slow`."""
    return [pytest.param(a, marks=() if a in FAST_ARCHS else pytest.mark.slow) for a in archs]


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

    def to_json(self) -> str:
        """The record as JSON, for another process (`from_json`)."""
        pairs = (("zip", self.zip), ("legacy", self.legacy))
        files = {name: {"path": str(f.path), "sha256": f.sha256, "size": f.size} for name, f in pairs}
        return json.dumps({**files, "fingerprint": self.fingerprint, "keys": list(self.keys)})

    @classmethod
    def from_json(cls, text: str) -> Checkpoints:
        """The record `to_json` wrote."""
        data = json.loads(text)
        files = [CheckpointFile(Path(data[n]["path"]), data[n]["sha256"], data[n]["size"]) for n in ("zip", "legacy")]
        return cls(*files, data["fingerprint"], tuple(data["keys"]))


class ModuleFolders:
    """The `module_folders` fixture: new folders under one test module's own, which is removed when the module ends."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        """A new, empty folder `name` (each name once per module), as `tmp_path_factory.mktemp` makes one."""
        folder = self.root / name
        folder.mkdir()
        return folder


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

    Built once per test module (130 M parameters take a while: see `forget_models`); the tests only read it.
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
    # TMPDIR: torchrun makes a torchelastic_* folder there and leaves it; this one goes with the run
    with tempfile.TemporaryDirectory(prefix="vggnet-torchrun-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": tmp}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


ROOT = Path(__file__).resolve().parent.parent


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


HOLD_LOCK = """
import sys
from pathlib import Path
from vggnet.data.outputs import writer_lock
with writer_lock(Path(sys.argv[1]), Path(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def hold_lock(lock: Path, what: Path) -> subprocess.Popen[str]:
    """Another process holding the writer lock `lock` of `what` until its stdin is closed (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock), str(what)], cwd=ROOT, env=dict(os.environ),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n", proc.communicate()
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    """Let a `hold_lock` process go, and wait for it."""
    proc.communicate(timeout=30)


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


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to declare `width`x`height` (CRC fixed): a decompression bomb's header."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"  # signature (8), chunk length (4), then the chunk type
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


VGG11_CONVS = [("block1_conv1", 3, 64), ("block2_conv1", 64, 128), ("block3_conv1", 128, 256),
               ("block3_conv2", 256, 256), ("block4_conv1", 256, 512), ("block4_conv2", 512, 512),
               ("block5_conv1", 512, 512), ("block5_conv2", 512, 512)]  # fmt: skip


def write_vgg11_notop(path: Path, seed: int = 0, *, secret: Path | None = None) -> Path:
    """A Keras-1 layout VGG11 notop file (float16: 18 MB); with `secret`, conv1_1's kernel is that file's bytes.

    The crafted kernel is HDF5 external storage, as an attacker writes it: plain h5py reads the secret through it.
    """
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _, _ in VGG11_CONVS]
        for name, cin, cout in VGG11_CONVS:
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            shape = (3, 3, cin, cout)
            if secret is not None and name == "block1_conv1":
                group.create_dataset(f"{name}_W_1:0", shape=shape, dtype="<f2", external=[(str(secret), 0, 3456)])
            elif secret is not None:
                group.create_dataset(f"{name}_W_1:0", shape=shape, dtype="<f2")  # never read: declared only
            else:
                group[f"{name}_W_1:0"] = rng.standard_normal(shape).astype(np.float16)
            group[f"{name}_b_1:0"] = rng.standard_normal(cout).astype(np.float16)
    return path


def offline_env(tmp_path: Path) -> dict[str, str]:
    """An environment for a subprocess that cannot download: an empty cache in `tmp_path`, vggnet and the Hugging
    Face Hub told they are offline, this checkout first on PYTHONPATH (for the docs' code and the examples), and
    TMPDIR in `tmp_path`, so that what the docs' code writes with `tempfile` goes with the test's folder."""
    root = Path(__file__).parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VGGNET_", "HF_"))}
    env.update(
        VGGNET_HOME=str(tmp_path / "cache"),
        TORCH_HOME=str(tmp_path / "torch"),
        VGGNET_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        TMPDIR=str(tmp_path / "tmp"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")])),
    )
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return env


# --- every head (issue 25): the builders' heads, no fc8, no pooling, and classifiers users put in -------------

VGG_HEAD = ["avgpool", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
# head kind -> the names of its layers after pool5 (the taps `layer_names` must end with)
HEAD_TAPS: dict[str, list[str]] = {
    "vgg": VGG_HEAD,
    "gap": ["gap", "fc"],
    "fc7": VGG_HEAD,
    "headless": VGG_HEAD[:-1],  # num_classes=0: no fc8
    "gap_headless": ["gap"],
    "unpooled": [],  # num_classes=0, global_pool="": the model returns pool5's map
    "identity": ["avgpool", "classifier"],  # torchvision's model.classifier = nn.Identity()
    "own": ["avgpool", "classifier.0", "classifier.1", "classifier.2", "classifier.3"],  # a Sequential of one's own
    "tv_fc8": VGG_HEAD,  # torchvision's model.classifier[6] = nn.Linear(4096, 10)
}
HEAD_KINDS = list(HEAD_TAPS)


SURGERY = ("identity", "own", "tv_fc8")  # torchvision-style changes to the default head's model


@functools.cache
def _head_model(kind: str, arch: str, seed: int) -> VGG:
    if kind in SURGERY:  # a copy of the default head's model (built once: fc6's init alone takes about a second)
        model = copy.deepcopy(_head_model("vgg", arch, seed))
        torch.manual_seed(seed + 1)  # the new layers' weights
        if kind == "identity":
            model.classifier = torch.nn.Identity()
        elif kind == "own":
            layers = [torch.nn.Linear(25088, 64), torch.nn.ReLU(True), torch.nn.Dropout(0.3), torch.nn.Linear(64, 10)]
            model.classifier = torch.nn.Sequential(*layers)
        else:
            model.classifier[6] = torch.nn.Linear(4096, 10)
        return model.eval()
    torch.manual_seed(seed)
    options: dict[str, dict[str, object]] = {
        "gap": {"head": "gap"},
        "fc7": {"head": "fc7"},
        "headless": {"num_classes": 0},
        "gap_headless": {"head": "gap", "num_classes": 0},
        "unpooled": {"num_classes": 0, "global_pool": ""},
    }
    model = vggnet.get_model(arch, **{"num_classes": 10, **options.get(kind, {})})  # type: ignore[arg-type]
    randomize_batchnorm(model, affine=True)
    return model.eval()


def head_model(kind: str, arch: str = "vgg11_bn", seed: int = 0) -> VGG:
    """A seeded eval-mode `arch` with the head `kind` of HEAD_TAPS and non-trivial BatchNorm; a fresh copy each call
    (the first one per test module is built, the others copied: see `forget_models`)."""
    return copy.deepcopy(_head_model(kind, arch, seed))


def forget_models() -> None:
    """Drop the models `small_model` and `head_model` keep (conftest calls it at each test module's end).

    Kept for the whole run, they grew each pytest-xdist worker by about 0.5 GB per head with fc6 and per
    architecture, to 8-10 GB: 20 GB in use of the CI machine's 24 during the slow matrix.
    """
    small_model.cache_clear()
    _head_model.cache_clear()
